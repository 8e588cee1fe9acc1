"""Segmentation metrics: the phase-1 per-batch scores and the dataset-level mIoU.

Phase 1 scores every batch of 2 on its own and averages the batch scores, so
its numbers depend on the batch size and on which images share a batch. The
0.2971 baseline is that per-batch IoU. Papers use the dataset-level mIoU from
one confusion matrix over the whole split; both are reported.

Every score here is computed from a confusion matrix `cm[target, pred]`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

DICE_SMOOTH = 1e-6  # phase 1's smoothing term


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """cm[t, p] = pixels with target t predicted as p (int64, on pred's device)."""
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = (t >= 0) & (t < num_classes)  # a label outside the table is no class: phase 1 never matches it
    idx = t[keep] * num_classes + p[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def phase1_iou(cm: np.ndarray) -> float:
    """Phase-1 batch IoU: per-class I/U, NaN where the union is empty, then the NaN-mean."""
    iou = class_iou(cm)
    return float(np.nanmean(iou)) if not np.all(np.isnan(iou)) else math.nan


def phase1_dice(cm: np.ndarray) -> float:
    """Phase-1 batch Dice: (2I + s) / (P + T + s) per class, plain mean (an absent class scores 1)."""
    cm = np.asarray(cm, dtype=np.float64)
    inter = np.diag(cm)
    dice = (2 * inter + DICE_SMOOTH) / (cm.sum(0) + cm.sum(1) + DICE_SMOOTH)
    return float(dice.mean())


def pixel_accuracy(cm: np.ndarray) -> float:
    """Share of pixels whose prediction equals the target."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else math.nan


def class_iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; NaN for a class absent from both target and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Dataset-level mIoU: the NaN-mean of per-class IoU over one confusion matrix."""
    iou = class_iou(cm)
    return float(np.nanmean(iou)) if not np.all(np.isnan(iou)) else math.nan


def phase1_class_iou(batch_cms: Sequence[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """Phase-1 test script's per-class IoU: each class's batch IoU averaged over the batches where it is not absent.

    "Absent" is what `phase1_iou` skips: an empty union (neither in the batch's target nor predicted there), so a
    class predicted in a batch without it scores 0 there. NaN for a class absent from every batch.
    """
    if len(batch_cms) == 0:
        return np.full(num_classes or 0, np.nan)
    rows = np.stack([class_iou(cm) for cm in batch_cms])
    seen = ~np.isnan(rows)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for a class absent everywhere: NaN, as wanted
        return np.where(seen, rows, 0.0).sum(0) / seen.sum(0)


class Phase1Meter:
    """Accumulates phase-1 per-batch scores and the split's confusion matrix.

    Batch matrices stay where they were computed (a GPU) until a score is read:
    one host sync per split, not one per batch.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._pending: list[torch.Tensor | np.ndarray] = []
        self._ious: list[float] = []
        self._dices: list[float] = []
        self._accs: list[float] = []
        self._cm: np.ndarray | None = None

    def add(self, batch_cm: torch.Tensor | np.ndarray) -> None:
        """Add one evaluation batch (its confusion matrix); it is scored when a result is read."""
        self._pending.append(batch_cm)

    def _flush(self) -> None:
        if not self._pending:
            return
        stacked = torch.stack([torch.as_tensor(c) for c in self._pending]).cpu().numpy()  # the one sync
        self._pending = []
        for cm in stacked:
            self._ious.append(phase1_iou(cm))
            self._dices.append(phase1_dice(cm))
            self._accs.append(pixel_accuracy(cm))
            self._cm = cm.astype(np.int64) if self._cm is None else self._cm + cm

    @property
    def ious(self) -> list[float]:
        """Phase-1 IoU of each batch, in order."""
        self._flush()
        return self._ious

    @property
    def dices(self) -> list[float]:
        self._flush()
        return self._dices

    @property
    def accs(self) -> list[float]:
        self._flush()
        return self._accs

    @property
    def cm(self) -> np.ndarray | None:
        """The split's confusion matrix (sum over batches), None before the first batch."""
        self._flush()
        return self._cm

    def summary(self, prefix: str) -> dict[str, float | list[float]]:
        """Mean of batch scores (phase 1) plus dataset-level mIoU and per-class IoU."""
        cm = self.cm if self.cm is not None else np.zeros((self.num_classes, self.num_classes), np.int64)
        return {
            f"{prefix}_iou": float(np.nanmean(self.ious)) if self.ious else math.nan,
            f"{prefix}_dice": float(np.mean(self.dices)) if self.dices else math.nan,
            f"{prefix}_acc": float(np.mean(self.accs)) if self.accs else math.nan,
            f"{prefix}_miou": mean_iou(cm),
            f"{prefix}_class_iou": [None if math.isnan(v) else float(v) for v in class_iou(cm)],
        }
