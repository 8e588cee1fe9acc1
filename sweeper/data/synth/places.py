"""The two places synthetic scenes show, as data: the dataset's classes, materials, textures, palettes and
object kinds of the train/val location and of the shifted test location (`sweeper.data.synth.scene` draws them).

The covers and budgets here are calibrated against the real dataset's class shares (REFERENCE_*_SHARES):
changing a number moves pixels, so bump `sweeper.data.synth.generate.VERSION` and re-measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np

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


# Materials: one per class, plus tree trunks and the distant ridge, which need their own colours.
CANOPY, LUSH, GRASS, DRY, CLUTTER, FLOWERS, LOGS, ROCKS, LAND, SKY, TRUNK, RIDGE = range(12)


@dataclass(frozen=True)
class Kind:
    """How one object class is sized and placed."""

    material: int
    budget: float  # mean nominal area per image, fraction of the image (calibrated so shares hit the reference)
    height_m: tuple[float, float]  # uniform range of the world height, metres
    width_m: tuple[float, float]  # uniform range of the world width, metres
    depth: tuple[float, float]  # uniform range of the base position, fraction of the ground from horizon to bottom


@dataclass(frozen=True)
class Profile:
    """Everything that tells one location (train/val or the shifted test place) apart."""

    horizon: tuple[float, float]  # uniform range of the mean horizon height, fraction of image height from the top
    tilt: float  # largest |slope| of the horizon, image heights per image width
    ridge_chance: float  # probability of a distant ridge (Landscape) rising above the horizon
    ridge_height: float  # largest ridge height, image heights
    rock_slabs: float  # mean fraction of the ground that is flat rock (Rocks)
    grass: float  # mean fraction of the ground that is dry grass
    clutter: float  # mean fraction of the ground covered by pebbles and debris
    flowers: float  # mean fraction of the ground covered by flowers
    kinds: tuple[Kind, ...]  # objects, placed up to their budgets
    log_chance: float  # probability of one log in an image (logs are rare in the real data)
    exposure: tuple[float, float]  # mean and sd of the image's mean RGB/255, like a camera's auto exposure
    palette: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]  # per material, two RGB ends to mix
    haze: float  # how much the ground fades into the sky colour at the horizon


# Per material (index order above): (grain, blotch, streak) texture amplitudes, relative brightness swings.
TEXTURE = np.array([
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
TEXTURE.flags.writeable = False  # module-level tables stay constant

TRAIN_PALETTE = (
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
TEST_PALETTE = (
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
TRAIN = Profile(
    horizon=(0.32, 0.52), tilt=0.12, ridge_chance=0.4, ridge_height=0.06,
    rock_slabs=0.0, grass=0.385, clutter=0.088, flowers=0.056,
    kinds=(
        Kind(CANOPY, budget=0.053, height_m=(2.5, 7.0), width_m=(1.8, 4.5), depth=(0.02, 0.6)),
        Kind(LUSH, budget=0.0705, height_m=(0.4, 1.4), width_m=(0.6, 2.2), depth=(0.02, 1.0)),
        Kind(DRY, budget=0.021, height_m=(0.3, 0.9), width_m=(0.4, 1.3), depth=(0.02, 1.0)),
        Kind(ROCKS, budget=0.013, height_m=(0.15, 0.8), width_m=(0.3, 1.5), depth=(0.02, 1.0)),
    ),
    log_chance=0.08, exposure=(0.51, 0.05), palette=TRAIN_PALETTE, haze=0.45,
)
TEST = Profile(
    horizon=(0.11, 0.27), tilt=0.10, ridge_chance=0.5, ridge_height=0.05,
    rock_slabs=0.06, grass=0.277, clutter=0.0, flowers=0.0,
    kinds=(
        Kind(CANOPY, budget=0.006, height_m=(2.0, 5.0), width_m=(1.5, 3.5), depth=(0.02, 0.3)),
        Kind(DRY, budget=0.057, height_m=(0.3, 1.0), width_m=(0.4, 1.5), depth=(0.02, 1.0)),
        Kind(ROCKS, budget=0.15, height_m=(0.3, 2.0), width_m=(0.6, 3.0), depth=(0.02, 1.0)),
    ),
    log_chance=0.0, exposure=(0.42, 0.04), palette=TEST_PALETTE, haze=0.55,
)
# At most one log per image (profile.log_chance): its budget is unused.
LOG = Kind(LOGS, budget=0.0, height_m=(0.18, 0.35), width_m=(1.5, 3.5), depth=(0.15, 0.9))
