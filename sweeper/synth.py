"""Procedural desert scenes written in the exact layout and mask format of the Duality AI offroad dataset.

The real dataset cannot be redistributed, so tests, smoke runs and demos use
scenes drawn here instead:

    OUT/{train,val,test}/Color_Images/000000.png   8-bit RGB
    OUT/{train,val,test}/Segmentation/000000.png   16-bit PNG of raw ids (100 ... 10000)

A scene is a horizon line (with an occasional distant ridge), a sky with a
gradient and clouds, a ground layer of sand, dry grass, pebbles and flowers
textured in ground-plane coordinates (so patches shrink toward the horizon),
then trees, bushes, rocks and logs sized by their distance and painted far to
near. Every class has its own colours and texture, muddied by per-image
colour drift, colour temperature and exposure, so it is learnable from local
appearance but not trivially. The test split (``shifted=True``) is a darker,
rockier location with a low horizon, like the real test images.

Class shares are steered toward the reference train shares: the ground layer
thresholds its noise fields at per-image quantiles and objects are placed up
to a per-image area budget. All geometry is drawn in image-relative units
before any pixel exists, so one scene rendered at 240x135 and at 960x540 has
the same layout and the same class shares up to rasterisation.

Determinism and safety: image ``i`` of a split uses
``np.random.default_rng([seed, split_code, i])``, so the same seed gives
byte-identical files and a larger set starts with the smaller one. `generate`
writes into a sibling folder ``OUT.tmp-<pid>-<hex>``, writes ``synth.json``
there last, then renames the folder onto OUT: OUT is either absent, the old
set or the complete new set, never half written. A failed or interrupted run
removes its temporary folder; only a hard kill leaves an ``OUT.tmp-*`` sibling
behind, which nothing reads and which may be deleted.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from sweeper.errors import SweeperError

log = logging.getLogger(__name__)

RAW_CLASSES: tuple[tuple[int, str], ...] = (
    (100, "Trees"),
    (200, "Lush Bushes"),
    (300, "Dry Grass"),
    (500, "Dry Bushes"),
    (550, "Ground Clutter"),
    (600, "Flowers"),
    (700, "Logs"),
    (800, "Rocks"),
    (7100, "Landscape"),
    (10000, "Sky"),
)

# Pixel share (%) of each class in the real train and test splits (reference/duality_offroad.md).
REFERENCE_TRAIN_SHARES: Mapping[str, float] = MappingProxyType({
    "Trees": 3.53, "Lush Bushes": 5.93, "Dry Grass": 18.87, "Dry Bushes": 1.10, "Ground Clutter": 4.39,
    "Flowers": 2.81, "Logs": 0.08, "Rocks": 1.20, "Landscape": 24.45, "Sky": 37.64,
})
REFERENCE_TEST_SHARES: Mapping[str, float] = MappingProxyType({
    "Trees": 0.27, "Lush Bushes": 0.0, "Dry Grass": 17.4, "Dry Bushes": 3.05, "Ground Clutter": 0.0,
    "Flowers": 0.0, "Logs": 0.0, "Rocks": 18.1, "Landscape": 43.2, "Sky": 18.0,
})

SPLITS: tuple[str, ...] = ("train", "val", "test")  # the index is the split code in the per-image seed
MARKER = "synth.json"  # written last: its presence means the set is complete
VERSION = 1  # bump whenever a change alters the pixels, so cached sets are not mistaken for new ones

# Materials: one per class, plus tree trunks and the distant ridge, which need their own colours.
_CANOPY, _LUSH, _GRASS, _DRY, _CLUTTER, _FLOWERS, _LOGS, _ROCKS, _LAND, _SKY, _TRUNK, _RIDGE = range(12)
_RAW_OF_MATERIAL = np.array([raw for raw, _ in RAW_CLASSES] + [100, 7100], dtype=np.uint16)
_RAW_OF_MATERIAL.flags.writeable = False

_CAMERA_HEIGHT = 1.6  # m; an object h metres tall at image distance d below the horizon is d*h/1.6 image heights
_GRID_MAX_WIDTH = 320  # px; ground-plane noise is evaluated at most this wide, then interpolated
_MIN_DEPTH = 0.004  # image heights below the horizon where ground-plane coordinates stop growing


@dataclass(frozen=True)
class _Kind:
    """How one object class is sized and placed."""

    material: int
    budget: float  # mean nominal area per image, fraction of the image (calibrated so shares hit the reference)
    height_m: tuple[float, float]  # uniform range of the world height, metres
    width_m: tuple[float, float]  # uniform range of the world width, metres
    depth: tuple[float, float]  # uniform range of the base position, fraction of the ground from horizon to bottom


@dataclass(frozen=True)
class _Profile:
    """Everything that tells one location (train/val or the shifted test place) apart."""

    horizon: tuple[float, float]  # uniform range of the mean horizon height, fraction of image height from the top
    tilt: float  # largest |slope| of the horizon, image heights per image width
    ridge_chance: float  # probability of a distant ridge (Landscape) rising above the horizon
    ridge_height: float  # largest ridge height, image heights
    rock_slabs: float  # mean fraction of the ground that is flat rock (Rocks)
    grass: float  # mean fraction of the ground that is dry grass
    clutter: float  # mean fraction of the ground covered by pebbles and debris
    flowers: float  # mean fraction of the ground covered by flowers
    kinds: tuple[_Kind, ...]  # objects, placed up to their budgets
    log_chance: float  # probability of one log in an image (logs are rare in the real data)
    exposure: tuple[float, float]  # mean and sd of the image's mean RGB/255, like a camera's auto exposure
    palette: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]  # per material, two RGB ends to mix
    haze: float  # how much the ground fades into the sky colour at the horizon


# Per material (index order above): (grain, blotch, streak) texture amplitudes, relative brightness swings.
_TEXTURE = np.array([
    (0.14, 0.16, 0.00),  # canopy: leafy speckle
    (0.10, 0.12, 0.03),  # lush bushes
    (0.08, 0.07, 0.20),  # dry grass: vertical blades
    (0.20, 0.10, 0.06),  # dry bushes: twiggy
    (0.12, 0.10, 0.00),  # ground clutter
    (0.07, 0.05, 0.00),  # flowers
    (0.05, 0.08, 0.00),  # logs
    (0.05, 0.14, 0.00),  # rocks: smooth with blotches
    (0.06, 0.06, 0.00),  # landscape: fine sand
    (0.01, 0.02, 0.00),  # sky
    (0.08, 0.05, 0.12),  # trunk: bark
    (0.02, 0.05, 0.00),  # ridge
], dtype=np.float32)
_TEXTURE.flags.writeable = False  # module-level tables stay constant

_TRAIN_PALETTE = (
    ((50, 76, 36), (80, 96, 50)),  # canopy: darker, bluer green than bushes
    ((74, 112, 46), (116, 142, 64)),  # lush bushes
    ((180, 160, 100), (150, 128, 80)),  # dry grass: straw
    ((128, 108, 82), (162, 142, 100)),  # dry bushes: overlaps the darker grass on purpose
    ((88, 78, 70), (138, 126, 112)),  # ground clutter: dark pebbles and debris
    ((238, 208, 72), (210, 116, 178)),  # flowers: yellow or pink
    ((100, 74, 52), (140, 110, 80)),  # logs
    ((126, 122, 116), (164, 154, 140)),  # rocks
    ((200, 172, 130), (170, 140, 102)),  # landscape: sand to dirt
    ((204, 216, 228), (80, 134, 202)),  # sky: horizon to zenith
    ((84, 66, 50), (112, 94, 76)),  # trunk
    ((156, 162, 176), (176, 162, 150)),  # ridge: hazy
)
_TEST_PALETTE = (
    ((46, 66, 38), (70, 84, 50)),
    ((70, 100, 48), (104, 126, 62)),
    ((146, 134, 98), (118, 108, 82)),  # dry grass: greyer
    ((108, 94, 78), (138, 120, 96)),
    ((88, 78, 70), (138, 126, 112)),
    ((238, 208, 72), (210, 116, 178)),
    ((100, 74, 52), (140, 110, 80)),
    ((100, 88, 82), (132, 116, 104)),  # rocks: dark brown-grey
    ((150, 122, 100), (118, 100, 86)),  # landscape: redder and darker
    ((190, 196, 206), (118, 148, 190)),  # sky: hazier
    ((84, 66, 50), (112, 94, 76)),
    ((140, 132, 134), (160, 140, 130)),
)

# Covers and budgets were tuned by measuring 400 scenes per split against REFERENCE_TRAIN_SHARES and
# REFERENCE_TEST_SHARES (all classes within 0.7 pp); re-measure after changing anything that moves pixels.
_TRAIN = _Profile(
    horizon=(0.32, 0.52), tilt=0.12, ridge_chance=0.4, ridge_height=0.06,
    rock_slabs=0.0, grass=0.385, clutter=0.088, flowers=0.056,
    kinds=(
        _Kind(_CANOPY, budget=0.053, height_m=(2.5, 7.0), width_m=(1.8, 4.5), depth=(0.02, 0.6)),
        _Kind(_LUSH, budget=0.0705, height_m=(0.4, 1.4), width_m=(0.6, 2.2), depth=(0.02, 1.0)),
        _Kind(_DRY, budget=0.021, height_m=(0.3, 0.9), width_m=(0.4, 1.3), depth=(0.02, 1.0)),
        _Kind(_ROCKS, budget=0.013, height_m=(0.15, 0.8), width_m=(0.3, 1.5), depth=(0.02, 1.0)),
    ),
    log_chance=0.08, exposure=(0.51, 0.05), palette=_TRAIN_PALETTE, haze=0.45,
)
_TEST = _Profile(
    horizon=(0.11, 0.27), tilt=0.10, ridge_chance=0.5, ridge_height=0.05,
    rock_slabs=0.06, grass=0.277, clutter=0.0, flowers=0.0,
    kinds=(
        _Kind(_CANOPY, budget=0.006, height_m=(2.0, 5.0), width_m=(1.5, 3.5), depth=(0.02, 0.3)),
        _Kind(_DRY, budget=0.057, height_m=(0.3, 1.0), width_m=(0.4, 1.5), depth=(0.02, 1.0)),
        _Kind(_ROCKS, budget=0.15, height_m=(0.3, 2.0), width_m=(0.6, 3.0), depth=(0.02, 1.0)),
    ),
    log_chance=0.0, exposure=(0.42, 0.04), palette=_TEST_PALETTE, haze=0.55,
)
# At most one log per image (profile.log_chance): its budget is unused.
_LOG = _Kind(_LOGS, budget=0.0, height_m=(0.18, 0.35), width_m=(1.5, 3.5), depth=(0.15, 0.9))


# --------------------------------------------------------------------------- noise helpers


def _lerp_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Sample the piecewise-linear interpolant of `a` along `axis` at n_out evenly spaced cell centres."""
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    p = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = (p - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n_out
    a0 = np.take(a, i0, axis=axis)
    out = np.take(a, i1, axis=axis)
    out -= a0
    out *= f.reshape(shape)
    out += a0
    return out


def _resize(a: np.ndarray, height: int, width: int, rows: int | None = None) -> np.ndarray:
    """Bilinear resize of a 2-D field (optionally only its top `rows` output rows), the same function at any size."""
    # Columns first: the full-size step is then a gather of whole rows, which is the cheap direction.
    out = _lerp_axis(a, width, 1)
    if rows is None or rows >= height:
        return _lerp_axis(out, height, 0)
    return out[:rows] if out.shape[0] == height else _lerp_rows(out, height, rows)


def _lerp_rows(a: np.ndarray, height: int, rows: int) -> np.ndarray:
    """The top `rows` rows of `_lerp_axis(a, height, 0)`, without computing the others."""
    n_in = a.shape[0]
    p = np.clip((np.arange(rows) + 0.5) * (n_in / height) - 0.5, 0, n_in - 1)
    i0 = np.floor(p).astype(np.intp)
    f = (p - i0).astype(np.float32)[:, None]
    a0 = a[i0]
    return a0 + (a[np.minimum(i0 + 1, n_in - 1)] - a0) * f


def _lattice(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Uniform [-1, 1] values on a lattice; interpolated, a smooth noise with rows x cols features per image."""
    return rng.uniform(-1, 1, (rows, cols)).astype(np.float32)


def _plane_noise(lattice: np.ndarray, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Periodic value noise at ground-plane coordinates (x, z), in lattice cells; the lattice is n x n, n = 2**k."""
    n = lattice.shape[0]
    flat = lattice.ravel()
    xf, zf = np.floor(x), np.floor(z)
    fx, fz = x - xf, z - zf
    fx = fx * fx * (3 - 2 * fx)  # smoothstep hides the lattice
    fz = fz * fz * (3 - 2 * fz)
    ix, iz = xf.astype(np.int32) & (n - 1), zf.astype(np.int32) & (n - 1)  # wrap: n is a power of two
    ix1, iz1 = (ix + 1) & (n - 1), (iz + 1) * n & (n * n - 1)
    iz = iz * n
    top = flat[iz + ix]
    top += (flat[iz + ix1] - top) * fx
    bottom = flat[iz1 + ix]
    bottom += (flat[iz1 + ix1] - bottom) * fx
    top += (bottom - top) * fz
    return top


def _waves(rng: np.random.Generator, harmonics: range, amplitude: float) -> Callable[[np.ndarray], np.ndarray]:
    """A random smooth 1-D profile over u in [0, 1]: sum of sines with amplitude/k falloff."""
    ks = np.array(list(harmonics), dtype=np.float64)
    amps = rng.uniform(0, amplitude, len(ks)) / ks
    phases = rng.uniform(0, 2 * np.pi, len(ks))

    def profile(u: np.ndarray) -> np.ndarray:
        return (amps[:, None] * np.sin(2 * np.pi * ks[:, None] * u[None, :] + phases[:, None])).sum(0)

    return profile


# --------------------------------------------------------------------------- scene layout


@dataclass(frozen=True)
class _Object:
    """One tree, bush, rock or log in image-relative units (u across, v down, sizes in image heights)."""

    material: int
    u: float  # horizontal centre, fraction of the width
    base: float  # v of the point where it meets the ground, fraction of the height
    below_horizon: float  # image heights from the horizon down to the base: how far away it is
    height: float  # image heights
    width: float  # image heights
    lumps: tuple[tuple[float, float, float], ...]  # (harmonic, amplitude, phase) of the outline
    tint: float  # brightness factor of this object
    mix: float  # where between the material's two colours it sits
    angle: float  # tilt in radians (logs)


def _place_objects(rng: np.random.Generator, prof: _Profile, horizon: Callable[[np.ndarray], np.ndarray],
                   aspect: float) -> list[_Object]:
    """Objects of every kind up to a per-image area budget, sorted far to near for painting."""
    objects: list[_Object] = []
    # A budget of None means exactly one object: logs are too rare for a budget to work.
    kinds: list[tuple[_Kind, float | None]] = [(kind, kind.budget * rng.uniform(0.2, 1.8)) for kind in prof.kinds]
    if rng.random() < prof.log_chance:
        kinds.append((_LOG, None))
    for kind, budget in kinds:
        area = 0.0
        while len(objects) < 400:
            u = rng.uniform(-0.05, 1.05)
            ground = 1.0 - float(horizon(np.array([u]))[0])
            depth = rng.uniform(*kind.depth)
            scale = depth * ground / _CAMERA_HEIGHT
            height = scale * rng.uniform(*kind.height_m)
            width = scale * rng.uniform(*kind.width_m)
            # Rocks: a few broad facets; foliage: many small bulges.
            lumps = tuple((k, rng.uniform(0, 0.18 / (k - 1) if kind.material == _ROCKS else 0.12),
                           rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
            # Nominal area, fraction of the image; a tree is a canopy ellipse about half its height plus a trunk.
            size = (0.5 if kind.material == _CANOPY else 0.78) * np.pi / 4 * width * height / aspect
            # Stop before overshooting the budget by more than half an object, so the mean lands on the budget.
            if budget is not None and area + size / 2 > budget:
                break
            objects.append(_Object(
                material=kind.material, u=u, base=1.0 - ground + depth * ground, below_horizon=depth * ground,
                height=height, width=width, lumps=lumps, tint=rng.uniform(0.82, 1.15), mix=rng.uniform(0, 1),
                angle=rng.normal(0, 0.12),
            ))
            area += size
            if budget is None:
                break
    objects.sort(key=lambda o: o.base)
    return objects


@dataclass
class _Canvas:
    """The per-pixel arrays objects paint into (one scene, discarded after rendering)."""

    material: np.ndarray  # (H, W) uint8 material index
    mix: np.ndarray  # (H, W) float32 position between the material's two colours
    shade: np.ndarray  # (H, W) float32 brightness factor from object shading
    distance: np.ndarray  # (H, W) float32 image heights below the horizon of the ground under each pixel (haze)
    porosity: np.ndarray  # (H, W) float32 smooth noise used to punch gaps into foliage
    twigs: np.ndarray  # (H, W) float32 finer noise for the gaps in dry bushes


def _blob(canvas: _Canvas, obj: _Object, cx: float, cy: float, rx: float, ry: float, *, material: int,
          bottom: float | None, gaps: float, light: float, holes: np.ndarray | None = None) -> None:
    """Paint a lumpy ellipse (pixel units); `gaps` is the fraction of it left see-through."""
    h, w = canvas.material.shape
    reach = 1.0 + sum(a for _, a, _ in obj.lumps)
    y0, y1 = max(int(cy - ry * reach), 0), min(int(np.ceil(cy + ry * reach)) + 1, h)
    x0, x1 = max(int(cx - rx * reach), 0), min(int(np.ceil(cx + rx * reach)) + 1, w)
    if bottom is not None:
        y1 = min(y1, int(np.ceil(bottom)) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    dy = ((np.arange(y0, y1) + 0.5 - cy) / ry).astype(np.float32)[:, None]
    dx = ((np.arange(x0, x1) + 0.5 - cx) / rx).astype(np.float32)[None, :]
    theta = np.arctan2(dy, dx)
    radius = np.ones_like(theta)
    for k, amp, phase in obj.lumps:
        radius += amp * np.cos(k * theta + phase)
    inside = dx * dx + dy * dy < radius * radius
    if bottom is not None:
        inside &= (np.arange(y0, y1) + 0.5 < bottom)[:, None]
    if gaps > 0:
        # Porosity noise is ~uniform in [-0.6, 0.6]; the gaps grow toward the outline like real foliage.
        edge = np.sqrt(dx * dx + dy * dy) / radius
        noise = canvas.porosity if holes is None else holes
        inside &= noise[y0:y1, x0:x1] + 0.6 * edge > 1.2 * gaps
    # Lit from above-left: brighter on top, darker toward the ground.
    shade = obj.tint * (1.0 - light * (0.5 * dy + 0.25 * dx))
    view = (slice(y0, y1), slice(x0, x1))
    canvas.material[view][inside] = material
    canvas.mix[view][inside] = np.broadcast_to(np.clip(obj.mix + 0.3 * dy, 0, 1), inside.shape)[inside]
    canvas.shade[view][inside] = np.broadcast_to(shade, inside.shape)[inside]
    canvas.distance[view][inside] = obj.below_horizon


def _paint(canvas: _Canvas, obj: _Object) -> None:
    """Paint one object, sized in image heights, onto the canvas."""
    h, w = canvas.material.shape
    cx, base = obj.u * w, obj.base * h
    ry, rx = obj.height * h / 2, obj.width * h / 2
    if obj.material == _CANOPY:
        canopy_ry = ry * 0.6
        trunk_top = base - 2 * ry + canopy_ry
        trunk_half = max(rx * 0.05, 0.3)
        y0, y1 = max(int(trunk_top), 0), min(int(np.ceil(base)), h)
        x0, x1 = max(int(np.floor(cx - trunk_half + 0.5)), 0), min(int(np.floor(cx + trunk_half + 0.5)), w)
        if y0 < y1 and x0 < x1:
            canvas.material[y0:y1, x0:x1] = _TRUNK
            canvas.mix[y0:y1, x0:x1] = obj.mix
            canvas.shade[y0:y1, x0:x1] = obj.tint * np.linspace(1.1, 0.85, x1 - x0, dtype=np.float32)[None, :]
            canvas.distance[y0:y1, x0:x1] = obj.below_horizon
        _blob(canvas, obj, cx, trunk_top, rx, canopy_ry, material=_CANOPY, bottom=None, gaps=0.15, light=0.35)
    elif obj.material == _LOGS:
        # A smooth ellipse tilted by obj.angle: measure each pixel along and across the log's axis.
        length, thick = rx, ry
        cy = base - thick
        c, s = np.cos(obj.angle), np.sin(obj.angle)
        half_w = abs(length * c) + abs(thick * s)
        half_h = abs(length * s) + abs(thick * c)
        y0, y1 = max(int(cy - half_h), 0), min(int(np.ceil(cy + half_h)) + 1, h)
        x0, x1 = max(int(cx - half_w), 0), min(int(np.ceil(cx + half_w)) + 1, w)
        if y0 >= y1 or x0 >= x1:
            return
        py = (np.arange(y0, y1) + 0.5 - cy)[:, None]
        px = (np.arange(x0, x1) + 0.5 - cx)[None, :]
        along = (px * c + py * s) / length
        across = (-px * s + py * c) / thick
        inside = along * along + across * across < 1
        view = (slice(y0, y1), slice(x0, x1))
        canvas.material[view][inside] = _LOGS
        canvas.mix[view][inside] = np.clip(obj.mix + 0.2 * np.sin(along * 9), 0, 1)[inside]
        canvas.shade[view][inside] = (obj.tint * (1.05 - 0.35 * across))[inside].astype(np.float32)
        canvas.distance[view][inside] = obj.below_horizon
    else:
        squash = 0.85 if obj.material == _ROCKS else 0.92
        cy = base - ry * squash
        gaps = {_LUSH: 0.12, _DRY: 0.3}.get(obj.material, 0.0)
        light = 0.5 if obj.material == _ROCKS else 0.3
        holes = canvas.twigs if obj.material == _DRY else canvas.porosity
        _blob(canvas, obj, cx, cy, rx, ry, material=obj.material, bottom=base, gaps=gaps, light=light, holes=holes)


# --------------------------------------------------------------------------- rendering


def _paint_ground(rng: np.random.Generator, prof: _Profile, horizon: Callable[[np.ndarray], np.ndarray],
                  material: np.ndarray, ground: np.ndarray) -> None:
    """Paint rock slabs, dry grass, clutter and flowers onto the Landscape ground, each with its share of it."""
    height, width = material.shape
    # Score fields live on a grid at most _GRID_MAX_WIDTH wide, in ground-plane coordinates so that
    # patches shrink and flatten toward the horizon; they are interpolated up to the image.
    gw = min(width, _GRID_MAX_WIDTH)
    gh = max(1, round(gw * height / width))
    u = (np.arange(gw) + 0.5) / gw
    v = (np.arange(gh) + 0.5) / gh
    depth = v[:, None] - horizon(u)[None, :]
    z = (1.0 / np.maximum(depth, _MIN_DEPTH)).astype(np.float32)  # distance, camera heights
    x = ((u - 0.5) * (width / height))[None, :].astype(np.float32) * z  # lateral offset, camera heights
    far = np.clip((0.06 - depth) / 0.06, 0, 1).astype(np.float32)  # small things vanish near the horizon

    def field(freq: float) -> np.ndarray:
        return _plane_noise(rng.uniform(-1, 1, (64, 64)).astype(np.float32), x * freq, z * freq)

    plan = [
        (_ROCKS, prof.rock_slabs, lambda: field(0.5) + 0.5 * field(1.6)),
        (_GRASS, prof.grass, lambda: field(0.35) + 0.5 * field(1.2)),
        (_CLUTTER, prof.clutter, lambda: field(22.0) + 0.6 * field(0.6) - 2.0 * far),  # pebbles in clusters
        (_FLOWERS, prof.flowers, lambda: field(14.0) + 0.8 * field(0.5) - 2.0 * far),
    ]
    free = ground.copy()
    free_share = 1.0
    # Quantiles come from every 7th pixel in raster order: 7 is prime, so the sample sees all positions
    # between grid points (where the interpolated field is smoother) instead of one phase of them.
    step = 1 if width <= gw else 7
    for mat, mean_share, make_score in plan:
        if mean_share <= 0:
            continue
        share = mean_share * rng.uniform(0.4, 1.6)
        score = _resize(make_score(), height, width)
        candidates = score.ravel()[::step][free.ravel()[::step]]
        if candidates.size == 0 or free_share <= 0:
            continue
        # The quantile is taken on the interpolated field so the share holds at every image size.
        threshold = np.quantile(candidates, 1.0 - min(share / free_share, 1.0))
        taken = free & (score > threshold)
        material[taken] = mat
        free &= ~taken
        free_share -= share


def _sky(rng: np.random.Generator, v: np.ndarray, hz: np.ndarray, height: int, width: int, rows: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """Sky gradient position (0 at the horizon, 1 at the zenith) and cloud opacity for the top `rows` rows."""
    mix = np.clip(1.0 - v[:rows, None] / np.maximum(hz[None, :], 1e-3), 0, 1) ** 0.8
    cover = rng.uniform(0.0, 0.7)
    # Clouds are wide and flat: few lattice rows, many columns.
    clouds = _resize(0.7 * _resize(_lattice(rng, 5, 8), 10, 24) + 0.3 * _lattice(rng, 10, 24), height, width, rows)
    alpha = np.clip((clouds - 0.45 + 0.7 * cover) * 2.5, 0, 1) * np.clip(mix * 3, 0, 1)
    return mix.astype(np.float32), alpha.astype(np.float32)


def render_scene(rng: np.random.Generator, *, width: int, height: int, shifted: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One procedural desert scene: a uint8 (H, W, 3) image and its uint16 (H, W) raw-id mask."""
    if width < 2 or height < 2:
        raise ValueError(f"scene size must be at least 2x2, got {width}x{height}")
    prof = _TEST if shifted else _TRAIN
    # Layout draws come first and never depend on the pixel size; texture draws do, so they get their own streams.
    layout_rng, texture_rng, grain_rng = rng.spawn(3)
    aspect = width / height

    h0 = layout_rng.uniform(*prof.horizon)
    tilt = layout_rng.uniform(-prof.tilt, prof.tilt)
    wave = _waves(layout_rng, range(1, 5), 0.03)
    has_ridge = layout_rng.random() < prof.ridge_chance
    ridge_wave = _waves(layout_rng, range(2, 9), 1.0)
    ridge_level = layout_rng.uniform(-0.3, 0.3)
    ridge_height = layout_rng.uniform(0.3, 1.0) * prof.ridge_height

    def horizon(u: np.ndarray) -> np.ndarray:
        return h0 + tilt * (u - 0.5) + wave(u)

    objects = _place_objects(layout_rng, prof, horizon, aspect)
    palette = np.array(prof.palette, dtype=np.float32)  # (material, end, rgb)
    # Per-image drift of each material's colours: mostly brightness, a little hue.
    palette *= layout_rng.normal(1.0, 0.05, (len(palette), 1, 1)).astype(np.float32)
    palette *= layout_rng.normal(1.0, 0.02, palette.shape).astype(np.float32)
    warmth = layout_rng.uniform(-0.07, 0.10)
    exposure = float(np.clip(layout_rng.normal(*prof.exposure), 0.25, 0.75))
    haze = prof.haze * layout_rng.uniform(0.4, 1.0)

    u = (np.arange(width) + 0.5) / width
    v = ((np.arange(height) + 0.5) / height).astype(np.float32)
    hz = horizon(u).astype(np.float32)
    depth = v[:, None] - hz[None, :]
    material = np.full((height, width), _LAND, dtype=np.uint8)
    material[depth <= 0] = _SKY
    if has_ridge:
        ridge = np.clip(ridge_wave(u) / 2 + ridge_level + 0.5, 0, 1).astype(np.float32) * ridge_height
        material[(depth <= 0) & (depth > -ridge[None, :])] = _RIDGE
    ground = depth > 0
    _paint_ground(layout_rng, prof, horizon, material, ground)

    # Texture fields have a fixed number of features per image so the look does not change with size.
    # Octaves are summed on the finer lattice, so each field costs one full-size interpolation.
    blotch = _resize(0.6 * _resize(_lattice(texture_rng, 18, 32), 54, 96) + 0.4 * _lattice(texture_rng, 54, 96),
                     height, width)
    tufts = np.clip(0.6 + _resize(_lattice(texture_rng, 9, 16), 45, 400), 0, 1)  # grass blades grow in tufts
    streak = _resize(_lattice(texture_rng, 45, 400) * tufts, height, width)
    porosity = _resize(0.6 * _lattice(texture_rng, 72, 128), height, width)
    twigs = _resize(0.6 * _lattice(texture_rng, 216, 384), height, width)
    sky_rows = min(height, int(np.ceil(float(hz.max()) * height)) + 1)  # no sky below the lowest horizon point
    sky_mix, cloud_alpha = _sky(texture_rng, v, hz, height, width, sky_rows)
    grain = grain_rng.standard_normal((height, width), dtype=np.float32)

    mix = np.clip(0.5 + 1.2 * blotch, 0, 1)
    top = (slice(0, sky_rows), slice(None))
    is_sky = material[top] == _SKY
    mix[top][is_sky] = sky_mix[is_sky]
    canvas = _Canvas(material=material, mix=mix, shade=np.ones((height, width), np.float32),
                     distance=np.maximum(depth, 0), porosity=porosity, twigs=twigs)
    for obj in objects:
        _paint(canvas, obj)
    cloud_alpha *= material[top] == _SKY  # clouds stay behind trees

    # Colour maths runs one channel at a time on contiguous (H, W) planes: 3-4x faster than on (H, W, 3).
    index = material.astype(np.intp)  # converted once instead of inside every table look-up
    modulation = np.take(_TEXTURE[:, 0], index)
    modulation *= grain
    modulation += 1
    modulation += np.take(_TEXTURE[:, 1], index) * blotch
    modulation += np.take(_TEXTURE[:, 2], index) * streak
    modulation *= canvas.shade
    # Atmospheric haze: the ground near the horizon fades to the horizon sky colour.
    fade = haze * np.exp(canvas.distance * -20.0) * (material != _SKY)  # fades over ~0.05 image heights
    cloud_white = np.float32(236) * (0.92 + 0.08 * blotch[top])
    gains = (1 + warmth, 1.0, 1 - warmth)  # colour temperature: + is warmer
    planes = []
    for c in range(3):
        plane = np.take(palette[:, 1, c] - palette[:, 0, c], index)
        plane *= canvas.mix
        plane += np.take(palette[:, 0, c], index)
        plane *= modulation
        plane += (palette[_SKY, 0, c] - plane) * fade
        plane[top] += (cloud_white - plane[top]) * cloud_alpha
        plane *= gains[c]
        planes.append(plane)
    scale = exposure * 255.0 / max(sum(float(p.mean()) for p in planes) / 3, 1.0)  # auto exposure to the target
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    for c, plane in enumerate(planes):
        plane *= scale
        plane += 0.5
        rgb[..., c] = np.clip(plane, 0, 255, out=plane)
    return rgb, _RAW_OF_MATERIAL[material]


# --------------------------------------------------------------------------- writing sets


def _spec(seed: int, counts: Mapping[str, int], size: tuple[int, int]) -> dict[str, object]:
    return {"generator": "sweeper.synth", "version": VERSION, "seed": seed, **counts, "size": list(size)}


def _read_marker(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == "sweeper.synth" else None


def is_synthetic(root: str | os.PathLike[str]) -> bool:
    """Whether a dataset root (or a test folder inside one) was written by this generator."""
    root = Path(root)
    return _read_marker(root) is not None or (root.parent != root and _read_marker(root.parent) is not None)


def _check_target(out: Path) -> None:
    """Refuse a target that exists and is neither empty nor an earlier synthetic set."""
    if out.is_symlink():
        raise SweeperError(f"{out} is a symbolic link; give the folder it points to, since the set replaces it whole")
    if out.exists() and not out.is_dir():
        raise SweeperError(f"{out} exists and is not a folder; choose a new or empty folder for the synthetic dataset")
    if out.is_dir() and any(out.iterdir()) and _read_marker(out) is None:
        raise SweeperError(f"{out} is not empty and holds no synthetic dataset ({MARKER} missing); "
                           "choose a new or empty folder")


def _install(tmp: Path, out: Path, spec: dict[str, object]) -> None:
    """Move the finished set onto `out`; if a concurrent run already put the same set there, keep theirs."""
    for _ in range(5):
        try:
            os.rename(tmp, out)  # atomic; succeeds when out is absent or an empty folder
            return
        except OSError:
            pass
        if _read_marker(out) == spec:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if out.exists():
            _check_target(out)
            aside = out.with_name(f"{out.name}.old-{secrets.token_hex(4)}")
            try:
                os.rename(out, aside)  # an earlier synthetic set: replaced as a whole, never merged
            except FileNotFoundError:
                continue
            shutil.rmtree(aside, ignore_errors=True)
    raise SweeperError(f"could not move the generated dataset into {out}; another process keeps replacing it")


def generate(out_dir: str | os.PathLike[str], *, train: int, val: int, test: int, seed: int = 0,
             size: tuple[int, int] = (960, 540), progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a synthetic set in the offroad layout to `out_dir` (new, empty or an earlier synthetic set)."""
    out = Path(out_dir)
    counts = {"train": train, "val": val, "test": test}
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise SweeperError(f"synthetic dataset: '{name}' must be a whole number >= 0 (got {n!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SweeperError(f"synthetic dataset: 'seed' must be a whole number >= 0 (got {seed!r})")
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 16
                                 for s in size):
        raise SweeperError(f"synthetic dataset: size must be (width, height), each a whole number >= 16 (got {size!r})")
    width, height = int(size[0]), int(size[1])
    seed = int(seed)
    spec = _spec(seed, counts, (width, height))
    if _read_marker(out) == spec:
        log.info("synthetic dataset already complete at %s", out)
        return out
    _check_target(out)

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise SweeperError(f"cannot write the synthetic dataset next to {out}: {e.strerror or e}") from None
    total, done = sum(counts.values()), 0
    log.info("generating %d synthetic images (%dx%d, seed %d) into %s", total, width, height, seed, out)
    try:
        for code, split in enumerate(SPLITS):
            images, masks = tmp / split / "Color_Images", tmp / split / "Segmentation"
            images.mkdir(parents=True)
            masks.mkdir(parents=True)
            for index in range(counts[split]):
                rng = np.random.default_rng([seed, code, index])
                rgb, mask = render_scene(rng, width=width, height=height, shifted=split == "test")
                name = f"{index:06d}.png"
                # Low zlib effort: the noisy images barely compress further and writing dominates otherwise.
                Image.fromarray(rgb).save(images / name, compress_level=1)
                Image.fromarray(mask).save(masks / name, compress_level=1)  # uint16 -> 16-bit greyscale PNG
                done += 1
                if progress is not None:
                    progress(done, total)
        (tmp / MARKER).write_text(json.dumps(spec, indent=1) + "\n")
        _install(tmp, out, spec)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SweeperError(f"cannot write the synthetic dataset to {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("synthetic dataset ready at %s", out)
    return out


def default_dataset(cache_root: str | os.PathLike[str], *, train: int = 32, val: int = 16, test: int = 16,
                    seed: int = 0) -> Path:
    """The small default synthetic set under `cache_root`, generated on first use and reused after."""
    name = f"synthetic-v{VERSION}-s{seed}-{train}-{val}-{test}"
    return generate(Path(cache_root) / name, train=train, val=val, test=test, seed=seed)
