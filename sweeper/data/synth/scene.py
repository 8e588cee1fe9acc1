"""Drawing one synthetic scene (horizon, sky, textured ground, objects) as an RGB image and its raw-id mask:
a pure function of a random generator and a size. The places' looks are data in `sweeper.data.synth.places`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sweeper.data.synth.places import (CANOPY, CLUTTER, DRY, FLOWERS, GRASS, LAND, LOG, LOGS, LUSH, RAW_CLASSES, RIDGE,
                                       ROCKS, SKY, TEST, TEXTURE, TRAIN, TRUNK, Kind, Profile)

_RAW_OF_MATERIAL = np.array([raw for raw, _ in RAW_CLASSES] + [100, 7100], dtype=np.uint16)
_RAW_OF_MATERIAL.flags.writeable = False

_CAMERA_HEIGHT = 1.6  # m; an object h metres tall at image distance d below the horizon is d*h/1.6 image heights
_GRID_MAX_WIDTH = 320  # px; ground-plane noise is evaluated at most this wide, then interpolated
_MIN_DEPTH = 0.004  # image heights below the horizon where ground-plane coordinates stop growing


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


def _place_objects(rng: np.random.Generator, prof: Profile, horizon: Callable[[np.ndarray], np.ndarray],
                   aspect: float) -> list[_Object]:
    """Objects of every kind up to a per-image area budget, sorted far to near for painting."""
    objects: list[_Object] = []
    # A budget of None means exactly one object: logs are too rare for a budget to work.
    kinds: list[tuple[Kind, float | None]] = [(kind, kind.budget * rng.uniform(0.2, 1.8)) for kind in prof.kinds]
    if rng.random() < prof.log_chance:
        kinds.append((LOG, None))
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
            lumps = tuple((k, rng.uniform(0, 0.18 / (k - 1) if kind.material == ROCKS else 0.12),
                           rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
            # Nominal area, fraction of the image; a tree is a canopy ellipse about half its height plus a trunk.
            size = (0.5 if kind.material == CANOPY else 0.78) * np.pi / 4 * width * height / aspect
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
    if obj.material == CANOPY:
        canopy_ry = ry * 0.6
        trunk_top = base - 2 * ry + canopy_ry
        trunk_half = max(rx * 0.05, 0.3)
        y0, y1 = max(int(trunk_top), 0), min(int(np.ceil(base)), h)
        x0, x1 = max(int(np.floor(cx - trunk_half + 0.5)), 0), min(int(np.floor(cx + trunk_half + 0.5)), w)
        if y0 < y1 and x0 < x1:
            canvas.material[y0:y1, x0:x1] = TRUNK
            canvas.mix[y0:y1, x0:x1] = obj.mix
            canvas.shade[y0:y1, x0:x1] = obj.tint * np.linspace(1.1, 0.85, x1 - x0, dtype=np.float32)[None, :]
            canvas.distance[y0:y1, x0:x1] = obj.below_horizon
        _blob(canvas, obj, cx, trunk_top, rx, canopy_ry, material=CANOPY, bottom=None, gaps=0.15, light=0.35)
    elif obj.material == LOGS:
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
        canvas.material[view][inside] = LOGS
        canvas.mix[view][inside] = np.clip(obj.mix + 0.2 * np.sin(along * 9), 0, 1)[inside]
        canvas.shade[view][inside] = (obj.tint * (1.05 - 0.35 * across))[inside].astype(np.float32)
        canvas.distance[view][inside] = obj.below_horizon
    else:
        squash = 0.85 if obj.material == ROCKS else 0.92
        cy = base - ry * squash
        gaps = {LUSH: 0.12, DRY: 0.3}.get(obj.material, 0.0)
        light = 0.5 if obj.material == ROCKS else 0.3
        holes = canvas.twigs if obj.material == DRY else canvas.porosity
        _blob(canvas, obj, cx, cy, rx, ry, material=obj.material, bottom=base, gaps=gaps, light=light, holes=holes)


# --------------------------------------------------------------------------- rendering


def _paint_ground(rng: np.random.Generator, prof: Profile, horizon: Callable[[np.ndarray], np.ndarray],
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
        (ROCKS, prof.rock_slabs, lambda: field(0.5) + 0.5 * field(1.6)),
        (GRASS, prof.grass, lambda: field(0.35) + 0.5 * field(1.2)),
        (CLUTTER, prof.clutter, lambda: field(22.0) + 0.6 * field(0.6) - 2.0 * far),  # pebbles in clusters
        (FLOWERS, prof.flowers, lambda: field(14.0) + 0.8 * field(0.5) - 2.0 * far),
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
    prof = TEST if shifted else TRAIN
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
    material = np.full((height, width), LAND, dtype=np.uint8)
    material[depth <= 0] = SKY
    if has_ridge:
        ridge = np.clip(ridge_wave(u) / 2 + ridge_level + 0.5, 0, 1).astype(np.float32) * ridge_height
        material[(depth <= 0) & (depth > -ridge[None, :])] = RIDGE
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
    is_sky = material[top] == SKY
    mix[top][is_sky] = sky_mix[is_sky]
    canvas = _Canvas(material=material, mix=mix, shade=np.ones((height, width), np.float32),
                     distance=np.maximum(depth, 0), porosity=porosity, twigs=twigs)
    for obj in objects:
        _paint(canvas, obj)
    cloud_alpha *= material[top] == SKY  # clouds stay behind trees

    # Colour maths runs one channel at a time on contiguous (H, W) planes: 3-4x faster than on (H, W, 3).
    index = material.astype(np.intp)  # converted once instead of inside every table look-up
    modulation = np.take(TEXTURE[:, 0], index)
    modulation *= grain
    modulation += 1
    modulation += np.take(TEXTURE[:, 1], index) * blotch
    modulation += np.take(TEXTURE[:, 2], index) * streak
    modulation *= canvas.shade
    # Atmospheric haze: the ground near the horizon fades to the horizon sky colour.
    fade = haze * np.exp(canvas.distance * -20.0) * (material != SKY)  # fades over ~0.05 image heights
    cloud_white = np.float32(236) * (0.92 + 0.08 * blotch[top])
    gains = (1 + warmth, 1.0, 1 - warmth)  # colour temperature: + is warmer
    planes = []
    for c in range(3):
        plane = np.take(palette[:, 1, c] - palette[:, 0, c], index)
        plane *= canvas.mix
        plane += np.take(palette[:, 0, c], index)
        plane *= modulation
        plane += (palette[SKY, 0, c] - plane) * fade
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
