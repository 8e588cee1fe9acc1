"""Figures and reports drawn from saved results only (never by re-training).

Every figure goes through `curves_panel` / `new_figure` / `save_figure`, so the
look is defined once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display: works on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from sweeper.errors import SweeperError  # noqa: E402
from sweeper.runs import METRICS_FILE, read_jsonl  # noqa: E402

log = logging.getLogger(__name__)

# (file name, [(metric, y-axis label)]) for phase 1's four figures, in its names.
PHASE1_FIGURES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("training_curves.png", (("loss", "Loss"),)),
    ("iou_curves.png", (("iou", "IoU (phase-1 per-batch)"),)),
    ("dice_curves.png", (("dice", "Dice (phase-1 per-batch)"),)),
    ("all_metrics_curves.png", (("loss", "Loss"), ("iou", "IoU (phase-1 per-batch)"),
                                ("dice", "Dice (phase-1 per-batch)"), ("acc", "Pixel accuracy"))),
)


def new_figure(panels: int = 1, *, width: float = 7.0, height: float = 4.5):
    """A figure with `panels` axes (a 2-column grid for more than one) in the house style."""
    sns.set_theme(style="whitegrid", context="notebook")
    cols = 1 if panels == 1 else 2
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return fig, list(axes.flat)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_panel(ax, data: pd.DataFrame, *, y: str, hue: str, title: str, ylabel: str,
                 references: Sequence[tuple[float, str]] = ()) -> None:
    """Per-epoch lines of `y`, one per `hue` value, with optional horizontal reference lines."""
    sns.lineplot(data=data, x="epoch", y=y, hue=hue, marker="o", ax=ax)
    for value, label in references:
        ax.axhline(value, linestyle="--", linewidth=1.2, color="0.3", label=label)
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize="small")


def history_long(history: Sequence[dict]) -> pd.DataFrame:
    """Epoch records -> rows of (epoch, split, metric, value) for the phase-1 metrics."""
    rows = []
    for r in history:
        for split in ("train", "val"):
            for metric in ("loss", "iou", "dice", "acc"):
                v = r.get(f"{split}_{metric}")
                if v is not None:
                    rows.append({"epoch": r["epoch"], "split": split.capitalize(), "metric": metric, "value": v})
    return pd.DataFrame(rows, columns=["epoch", "split", "metric", "value"])


def phase1_plots(run_dir: Path) -> list[Path]:
    """Phase 1's four training-curve figures for a single run, from its metrics.jsonl."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise SweeperError(f"{path}: no per-epoch metrics in this run folder")
    df = history_long(read_jsonl(path))
    written = []
    for name, panels in PHASE1_FIGURES:
        fig, axes = new_figure(len(panels))
        for ax, (metric, label) in zip(axes, panels):
            curves_panel(ax, df[df.metric == metric], y="value", hue="split",
                         title=f"{label.split(' (')[0]} vs epoch", ylabel=label)
        written.append(save_figure(fig, run_dir / name))
    return written
