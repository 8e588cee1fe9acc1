"""Phase 1's evaluation_metrics.txt, byte for byte: the baseline run's text file in the organisers' format.

Its file name is `sweeper.rundir.layout.TEXT_FILE`; its best epochs come from `sweeper.training.objective.best_index`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from sweeper.training.objective import best_index


def evaluation_metrics_text(history: Iterable[dict[str, Any]]) -> str:
    """Phase 1's evaluation_metrics.txt byte for byte: final metrics, best results with epoch, per-epoch table."""
    h = list(history)
    col = lambda k: [r.get(k) for r in h]  # noqa: E731
    num = lambda v: float("nan") if v is None else v  # noqa: E731
    last = h[-1]
    lines = ["TRAINING RESULTS", "=" * 50, "", "Final Metrics:"]
    for label, key in [("Train Loss", "train_loss"), ("Val Loss", "val_loss"), ("Train IoU", "train_iou"),
                       ("Val IoU", "val_iou"), ("Train Dice", "train_dice"), ("Val Dice", "val_dice"),
                       ("Train Accuracy", "train_acc"), ("Val Accuracy", "val_acc")]:
        lines.append(f"  Final {label + ':':<16}{num(last.get(key)):.4f}")
    lines += ["=" * 50, "", "Best Results:"]
    for label, key, low in [("Best Val IoU", "val_iou", False), ("Best Val Dice", "val_dice", False),
                            ("Best Val Accuracy", "val_acc", False), ("Lowest Val Loss", "val_loss", True)]:
        i = best_index(col(key), mode="min" if low else "max")
        v, e = (math.nan, "-") if i is None else (float(h[i][key]), i + 1)
        lines.append(f"  {label + ':':<19}{v:.4f} (Epoch {e})")
    lines += ["=" * 50, "", "Per-Epoch History:", "-" * 100]
    headers = ["Epoch", "Train Loss", "Val Loss", "Train IoU", "Val IoU", "Train Dice", "Val Dice", "Train Acc",
               "Val Acc"]
    # Every column padded to its width, the last one too: the organisers' rows end in spaces, and so do ours.
    lines.append(" ".join(f"{x:<12}" if i else f"{x:<8}" for i, x in enumerate(headers)))
    lines.append("-" * 100)
    keys = ["train_loss", "val_loss", "train_iou", "val_iou", "train_dice", "val_dice", "train_acc", "val_acc"]
    for r in h:
        lines.append(f"{r['epoch']:<8} " + " ".join(f"{num(r.get(k)):<12.4f}" for k in keys))
    return "\n".join(lines) + "\n"
