"""Figures of one run: phase 1's four training-curve figures (theirs, and ours for the report), a baseline run's report figures, and the
figures `sweeper evaluate` draws (a test image next to its masks, per-class IoU on test vs validation).

Drawn with the same helpers and style as the sweep figures (`figures.py`), so every PNG looks alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from sweeper.data.classes import ORGANISERS_CLASS_NAMES
from sweeper.errors import SweeperError
from sweeper.files import read_jsonl
from sweeper.report.figures import (FigureSpec, NoData, new_figure, plain_figure, plain_style, save_figure, save_plain,
                                    styled, val_iou_curves_axes)
from sweeper.report.load import BaselineRun
from sweeper.report.summary import fmt, synthetic_tag
from sweeper.rundir.layout import METRICS_FILE

# The organisers' test-script palette (RGB), so our colour masks match theirs pixel for pixel. Not in the
# reference files here: taken from public copies of their test_segmentation.py, which agree on it. Their
# class 0 is "Background" (black); in practice it holds Flowers (the class table drops id 600).
PALETTE = np.array([
    (0, 0, 0),        # 0 Flowers/bg: black
    (34, 139, 34),    # 1 Trees: forest green
    (0, 255, 0),      # 2 Lush Bushes: lime
    (210, 180, 140),  # 3 Dry Grass: tan
    (139, 90, 43),    # 4 Dry Bushes: brown
    (128, 128, 0),    # 5 Ground Clutter: olive
    (139, 69, 19),    # 6 Logs: saddle brown
    (128, 128, 128),  # 7 Rocks: grey
    (160, 82, 45),    # 8 Landscape: sienna
    (135, 206, 235),  # 9 Sky: sky blue
], dtype=np.uint8)
ORGANISERS_TRAIN_DPI = 100  # their train script saves its curves at matplotlib's default resolution
ORGANISERS_TEST_DPI = 150  # their test script's comparisons and bar chart


@dataclass(frozen=True)
class Panel:
    """One panel of a phase-1 training figure."""

    title: str  # the organisers' panel title
    ylabel: str  # their y-axis label
    series: tuple[tuple[str, str], ...]  # (metrics.jsonl key, legend label), drawn in this order


def _train_val(key: str) -> tuple[tuple[str, str], ...]:
    return ((f"train_{key}", "train"), (f"val_{key}", "val"))


# Phase 1's four figures by file name, panels in reading order (two side by side, or a 2x2 grid). Titles and
# labels are the organisers' own, as public copies of their train_segmentation.py have them (results/README.md).
PHASE1_FIGURES: dict[str, tuple[Panel, ...]] = {
    "training_curves.png": (Panel("Loss", "Loss", _train_val("loss")),
                            Panel("Pixel Accuracy", "Accuracy", _train_val("acc"))),
    "iou_curves.png": (Panel("Train IoU vs Epoch", "IoU", (("train_iou", "Train IoU"),)),
                       Panel("Validation IoU vs Epoch", "IoU", (("val_iou", "Val IoU"),))),
    "dice_curves.png": (Panel("Train Dice vs Epoch", "Dice Score", (("train_dice", "Train Dice"),)),
                        Panel("Validation Dice vs Epoch", "Dice Score", (("val_dice", "Val Dice"),))),
    "all_metrics_curves.png": (Panel("Loss vs Epoch", "Loss", _train_val("loss")),
                               Panel("IoU vs Epoch", "IoU", _train_val("iou")),
                               Panel("Dice Score vs Epoch", "Dice Score", _train_val("dice")),
                               Panel("Pixel Accuracy vs Epoch", "Pixel Accuracy", _train_val("acc"))),
}


# --------------------------------------------------------------------------- phase 1's training curves


def curves_panel(ax: Any, history: Sequence[dict], panel: Panel) -> None:
    """One panel's per-epoch lines (one per series, in order), title and labels: every phase-1 panel is drawn so."""
    for key, label in panel.series:
        points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]  # a missing value: no point
        ax.plot([e for e, _ in points], [v for _, v in points], marker="o", markersize=4, label=label)
    ax.set_title(panel.title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("Epoch")
    ax.set_ylabel(panel.ylabel)
    ax.legend(loc="best", fontsize="small")


def _panels(name: str) -> tuple[Panel, ...]:
    if name not in PHASE1_FIGURES:
        raise SweeperError(f"{name}: not one of phase 1's figures ({', '.join(PHASE1_FIGURES)})")
    return PHASE1_FIGURES[name]


@styled
def phase1_figure(history: Sequence[dict], name: str) -> Figure:
    """One of phase 1's four figures (a PHASE1_FIGURES name) from epoch records in the house style, epochs
    1..n with markers (the report's version), returned open."""
    panels = _panels(name)
    fig, axes = new_figure(len(panels), width=6.0, height=5.0)  # the organisers' 12x5 (two) and 12x10 (four)
    for ax, panel in zip(axes, panels):
        curves_panel(ax, history, panel)
    return fig


def organisers_training_figure(history: Sequence[dict], name: str) -> Figure:
    """One of phase 1's four figures drawn as their train script draws it: `plt.plot(history[key])`, so x is
    the list index 0..n-1, no markers, grid on, 12x5 in (two panels) or 12x10 (four), matplotlib's default
    style. The same panels as `phase1_figure`, which draws the report's version (epochs 1..n, markers)."""
    panels = _panels(name)
    fig, axes = plain_figure(12, 5 * ((len(panels) + 1) // 2), panels=len(panels), columns=2)
    with plain_style():
        for ax, panel in zip(axes, panels):
            for key, label in panel.series:
                ax.plot([np.nan if r.get(key) is None else r[key] for r in history], label=label)
            ax.set_title(panel.title)
            ax.set_xlabel("Epoch")
            ax.set_ylabel(panel.ylabel)
            ax.legend()
            ax.grid(True)
    return fig


def phase1_plots(run_dir: Path) -> list[Path]:
    """Phase 1's four training-curve figures for a single run, from its metrics.jsonl, as their script draws
    them (under their names; the report holds our version)."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise SweeperError(f"{path}: no per-epoch metrics in this run folder")
    history = read_jsonl(path)
    return [save_plain(organisers_training_figure(history, name), run_dir / name, dpi=ORGANISERS_TRAIN_DPI,
                       tight_box=False) for name in PHASE1_FIGURES]


# --------------------------------------------------------------------------- a baseline run's report


@styled
def plot_baseline_val_iou(run: BaselineRun) -> Figure:
    """This run's val IoU per epoch against the published phase-1 curve."""
    h = pd.DataFrame(run.history)
    if h.empty or "val_iou" not in h:
        raise NoData(f"no epoch in {METRICS_FILE}")
    h = h.assign(trial=0, optimizer=(run.info.get("config") or {}).get("optimizer", "sgd"))
    fig, (ax,) = new_figure(width=10.0, height=5.0)
    val_iou_curves_axes(ax, h, baseline_trial=0, baseline_label="this run")
    ax.set_title("Validation IoU per epoch: this run vs the published phase-1 curve")
    return fig


def plot_baseline_curves(run: BaselineRun) -> Figure:
    """Phase 1's combined 2x2 figure (loss, IoU, Dice, accuracy; train and val)."""
    if not run.history:
        raise NoData(f"no epoch in {METRICS_FILE}")
    return phase1_figure(run.history, "all_metrics_curves.png")


BASELINE_FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("val_iou_vs_phase1.png", "Validation IoU vs the published phase-1 curve",
               "This run's val IoU per epoch with the published phase-1 curve on the real data.",
               plot_baseline_val_iou),
    FigureSpec("metric_curves.png", "Training curves (phase 1's four panels)",
               "Loss, IoU, Dice and pixel accuracy per epoch, train and val, as phase 1 drew them.",
               plot_baseline_curves),
)


# --------------------------------------------------------------------------- `sweeper evaluate`'s figures


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class ids (H, W) -> (H, W, 3) uint8 RGB in PALETTE; ids outside the table are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:len(PALETTE)] = PALETTE
    return lut[mask.astype(np.uint8)]


def _legend_handles(class_names: Sequence[str]) -> list[Patch]:
    return [Patch(facecolor=PALETTE[i] / 255, edgecolor="0.3", label=f"{i} {n}") for i, n in enumerate(class_names)]


@styled
def comparison_figure(image: np.ndarray, target: np.ndarray, pred: np.ndarray, *, title: str,
                      class_names: Sequence[str], path: Path) -> Path:
    """Image, ground truth, prediction and an error map of one test sample, with the class legend."""
    h, w = target.shape
    fig, (placeholder,) = new_figure(1, width=12.0, height=12.0 * h / w + 1.6)
    placeholder.remove()  # the house style and size from new_figure; the grid below adds a legend row
    grid = fig.add_gridspec(3, 2, height_ratios=(1.0, 1.0, 0.22))
    axes = [fig.add_subplot(grid[r, c]) for r in range(2) for c in range(2)]
    wrong = pred != target
    errors = (0.35 * image.mean(axis=2, keepdims=True).repeat(3, axis=2)).astype(np.uint8)  # dimmed grey image
    errors[wrong] = (230, 30, 30)
    panels = [(image, "Image (at evaluation size)"), (colorize(target), "Ground truth"),
              (colorize(pred), f"Prediction (pixel accuracy {1.0 - wrong.mean():.1%})"),
              (errors, f"Errors in red ({wrong.mean():.1%} of pixels)")]
    for ax, (img, name) in zip(axes, panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name, fontsize="medium")
        ax.axis("off")
    legend_ax = fig.add_subplot(grid[2, :])
    legend_ax.axis("off")
    legend_ax.legend(handles=_legend_handles(class_names), loc="center", ncol=5, fontsize="small", frameon=False)
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def per_class_figure(metrics: dict[str, Any], path: Path) -> Path:
    """Grouped bars of per-class IoU: test in both flavours next to validation, from a test_metrics.json dict."""
    names = list(metrics["dataset"]["class_iou"])
    test = [metrics["dataset"]["class_iou"][n] for n in names]
    val_rec = metrics.get("validation")
    in_test = metrics["class_pixels"]["target"]
    fig, (ax,) = new_figure(1, width=12.0, height=5.6)
    x = np.arange(len(names))
    series = [(f"test, dataset-level (mIoU {fmt(metrics['dataset']['miou'], 3, missing='n/a')})", test, "#dd8452",
               True)]
    per_batch = metrics["phase1"].get("class_iou") or {}
    if per_batch:  # absent from a test_metrics.json written before both flavours were kept
        series.append((f"test, phase-1 per-batch (mean IoU {fmt(metrics['phase1']['iou'], 3, missing='n/a')})",
                       [per_batch.get(n) for n in names], "#c44e52", True))
    width = 0.8 / (len(series) + bool(val_rec))
    if val_rec:
        series.insert(0, (f"validation, dataset-level, epoch {val_rec.get('epoch')} "
                          f"(mIoU {fmt(val_rec.get('val_miou'), 3, missing='n/a')})",
                          [val_rec["class_iou"].get(n) for n in names], "#4c72b0", False))
    first_test = next(k for k, s in enumerate(series) if s[3])
    for k, (label, values, color, is_test) in enumerate(series):
        pos = x + (k - (len(series) - 1) / 2) * width
        heights = np.array([0.0 if v is None else v for v in values], dtype=float)
        ax.bar(pos, heights, width, label=label, color=color)
        for i, (p, v) in enumerate(zip(pos, values)):
            # Zero bars are invisible and NaN ones (class neither present nor predicted) have no bar:
            # say which is which. A class with no test pixels has no meaningful test IoU at all (said once).
            absent = is_test and not in_test.get(names[i])
            text = (("absent\nin test" if k == first_test else "") if absent
                    else "n/a" if v is None else f"{v:.2f}")
            if not text:
                continue
            ax.annotate(text, (p, heights[i]), ha="center", va="bottom", fontsize="x-small",
                        color="0.35" if text[0].isalpha() else "0.1", xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylim(0, 1.18)  # headroom for the legend above the tallest possible bar
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("IoU per class")
    ax.set_title(f"Per-class IoU, validation vs test: {metrics['run']['label']}"
                 f"{synthetic_tag(metrics['data']['synthetic'])}")
    ax.grid(axis="x", visible=False)  # vertical lines would cut through the bar pairs
    ax.legend(loc="upper center", ncol=len(series), fontsize="x-small")
    return save_figure(fig, path)


def organisers_comparison(image: np.ndarray, target: np.ndarray, pred: np.ndarray, *, name: str,
                          path: Path) -> Figure:
    """The organisers' comparisons/sample_<k>_comparison.png: "Input Image", "Ground Truth", "Prediction" in a
    row, titled "Sample: <file name>", 15x5 in at 150 dpi, in matplotlib's default style; returned closed-over."""
    fig, axes = plain_figure(15, 5, panels=3)
    for ax, img, title in zip(axes, (image, colorize(target), colorize(pred)),
                              ("Input Image", "Ground Truth", "Prediction")):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"Sample: {name}")
    save_plain(fig, path, dpi=ORGANISERS_TEST_DPI)
    return fig


def organisers_per_class(class_iou: Sequence[float | None], mean_iou: float, *, path: Path) -> Figure:
    """The organisers' per_class_metrics.png: one bar per class in the palette's colours (a class with no IoU
    drawn at 0), a red dashed mean line labelled "Mean", titled "Per-Class IoU (Mean: x)", 10x6 in at 150 dpi."""
    fig, (ax,) = plain_figure(10, 6)
    n = len(class_iou)
    ax.bar(range(n), [0.0 if v is None or np.isnan(v) else v for v in class_iou], color=list(PALETTE[:n] / 255),
           edgecolor="black")
    ax.set_xticks(range(n))
    ax.set_xticklabels(ORGANISERS_CLASS_NAMES[:n], rotation=45, ha="right")
    ax.set_ylabel("IoU")
    ax.set_title(f"Per-Class IoU (Mean: {mean_iou:.4f})")
    ax.set_ylim(0, 1)
    ax.axhline(y=mean_iou, color="red", linestyle="--", label="Mean")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_plain(fig, path, dpi=ORGANISERS_TEST_DPI)
    return fig
