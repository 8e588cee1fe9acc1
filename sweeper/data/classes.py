"""The dataset's ten classes as data: the phase-1 table from raw mask ids, the names (ours and the organisers'),
and how label maps are resized (`LabelMode`). No torch and no file access: the report and the configs read these.
"""

from __future__ import annotations

import enum


class LabelMode(str, enum.Enum):
    """How a label map is resized to the training size (a data decision: `TrainConfig.label_mode` names one)."""

    PHASE1 = "phase1"  # the organisers' bilinear resize of the label map, /255 *255, truncate
    NEAREST = "nearest"  # nearest-neighbour resize: every pixel keeps an exact class id


# The phase-1 script's table, raw id -> class index. Flowers (600) is missing
# from it, so Flowers pixels (and any unknown id) stay 0: class 0 is Flowers.
PHASE1_CLASS_TABLE: dict[int, int] = {
    0: 0, 100: 1, 200: 2, 300: 3, 500: 4, 550: 5, 700: 6, 800: 7, 7100: 8, 10000: 9,
}


CLASS_NAMES: tuple[str, ...] = (
    "Flowers/bg", "Trees", "Lush Bushes", "Dry Grass", "Dry Bushes",
    "Ground Clutter", "Logs", "Rocks", "Landscape", "Sky",
)


# The class names the organisers' test script writes and draws: class 0 is their "Background" (ours,
# `Flowers/bg` in our own files, says what it holds in practice).
ORGANISERS_CLASS_NAMES = ("Background", "Trees", "Lush Bushes", "Dry Grass", "Dry Bushes", "Ground Clutter",
                          "Logs", "Rocks", "Landscape", "Sky")


NUM_CLASSES = len(CLASS_NAMES)


# Ids the dataset documents; 600 (Flowers) is valid but folded into class 0 by the table.
KNOWN_RAW_IDS = frozenset(PHASE1_CLASS_TABLE) | {600}
