"""Figures and reports drawn from saved results only (never by re-training).

Every figure goes through `new_figure` / `save_figure`; lines that compare with a
reference (the published phase-1 figure, the sweep's own baseline trial) go
through `reference_line` / `reference_curve`, so the look is defined once.

`write_report(RUN_DIR)` turns a run folder into `RUN_DIR/report/`:

    index.html   one self-contained page: headline, figures (embedded PNG), sortable trials table
    summary.md   the headline and the top-10 trials
    *.png        the figures, also embedded in index.html

A run folder is a sweep (`python -m sweeper search`: sweep.json, trials.csv, ...) or
a baseline run (`python -m sweeper baseline`: config.json, metrics.jsonl, ...).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import logging
import math
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display: works on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from sweeper.errors import SweeperError  # noqa: E402
from sweeper.results import (CONFIG_FILE, CONFIRM_SUMMARY_CSV, EXPERIMENT_DIR, HISTORY_CSV,  # noqa: E402
                             METRICS_FILE, REPORT_DIR, SPACE_COPY, STUDY_FILE, SWEEP_FILE, TRIALS_CSV)
from sweeper.runs import (check_sqlite, ensure_writable_dir, read_csv,  # noqa: E402
                          read_json, read_jsonl, write_atomic, write_text_atomic)
from sweeper.config import PUBLISHED_BASELINE_IOU  # noqa: E402

log = logging.getLogger(__name__)

# Phase 1's val IoU per epoch on the real data (phase-1 report, section 5); ends at PUBLISHED_BASELINE_IOU.
PHASE1_VAL_IOU: tuple[float, ...] = (0.2211, 0.2513, 0.2636, 0.2733, 0.2758, 0.2851, 0.2874, 0.2924, 0.2934, 0.2971)
SCORE = "best_val_iou"  # trials.csv column every ranking uses: phase 1's per-batch IoU, the one 0.2971 is in
TOP_SUMMARY = 10  # trials in summary.md's table
TOP_CLASS_TRIALS = 5  # trials compared per class against the baseline
MIN_IMPORTANCE_TRIALS = 5  # fewer completed study trials give importances that are noise
CLASS_PREFIX = "val_class_iou/"  # history.csv per-class columns

PUBLISHED_LABEL = "published phase-1 figure on the real data"
SYNTHETIC_BANNER = ("SYNTHETIC data and an UNTRAINED random backbone: numbers show the machinery works, "
                    "they say nothing about the real task")

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

# One look for the two references everywhere; `gid` lets tests find the lines on the axes.
REFERENCE_STYLE: dict[str, dict[str, Any]] = {
    "published": {"color": "0.15", "linestyle": "--", "linewidth": 1.5},
    "baseline": {"color": "#8172b3", "linestyle": "-.", "linewidth": 2.0},
}
OPTIMIZER_COLORS = {"sgd": "#4c72b0", "adam": "#dd8452", "adamw": "#55a868"}  # the same in every figure


# --------------------------------------------------------------------------- shared plotting helpers


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
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path


def reference_line(ax, value: float, *, kind: str, label: str):
    """A horizontal reference line ('published' or 'baseline' style) with its value in the label."""
    line = ax.axhline(value, label=label, zorder=4, **REFERENCE_STYLE[kind])
    line.set_gid(f"reference:{kind}")
    return line


def reference_curve(ax, epochs: Sequence[float], values: Sequence[float], *, kind: str, label: str):
    """A per-epoch reference curve ('published' or 'baseline' style), drawn above the trials."""
    (line,) = ax.plot(list(epochs), list(values), marker="s", markersize=4, label=label, zorder=5,
                      **REFERENCE_STYLE[kind])
    line.set_gid(f"reference:{kind}")
    return line


def reference_lines(ax) -> dict[str, list[float]]:
    """The y-values of the reference lines drawn on `ax`, by kind (what a reader of the figure compares to)."""
    out: dict[str, list[float]] = {}
    for line in ax.get_lines():
        gid = line.get_gid() or ""
        if gid.startswith("reference:"):
            out.setdefault(gid.split(":", 1)[1], []).extend(float(y) for y in line.get_ydata())
    return out


def outside_legend(ax, **kw) -> None:
    """Legend to the right of the axes, so it never covers data (tight_layout makes room)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0, **kw)


def message_figure(title: str, message: str):
    """A figure that says why the real one cannot be drawn (missing or too little data)."""
    fig, (ax,) = new_figure(width=8.0, height=2.6)
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize="medium", transform=ax.transAxes)
    return fig


def curves_panel(ax, history: Sequence[dict], panel: Panel) -> None:
    """One panel's per-epoch lines (one per series, in order), title and labels: every phase-1 panel is drawn so."""
    for key, label in panel.series:
        points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]  # a missing value: no point
        ax.plot([e for e, _ in points], [v for _, v in points], marker="o", markersize=4, label=label)
    ax.set_title(panel.title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("Epoch")
    ax.set_ylabel(panel.ylabel)
    ax.legend(loc="best", fontsize="small")


def phase1_figure(history: Sequence[dict], name: str):
    """One of phase 1's four figures (a PHASE1_FIGURES name) from epoch records, returned open."""
    if name not in PHASE1_FIGURES:
        raise SweeperError(f"{name}: not one of phase 1's figures ({', '.join(PHASE1_FIGURES)})")
    panels = PHASE1_FIGURES[name]
    fig, axes = new_figure(len(panels), width=6.0, height=5.0)  # the organisers' 12x5 (two) and 12x10 (four)
    for ax, panel in zip(axes, panels):
        curves_panel(ax, history, panel)
    return fig


def phase1_plots(run_dir: Path) -> list[Path]:
    """Phase 1's four training-curve figures for a single run, from its metrics.jsonl."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise SweeperError(f"{path}: no per-epoch metrics in this run folder")
    history = read_jsonl(path)
    return [save_figure(phase1_figure(history, name), run_dir / name) for name in PHASE1_FIGURES]


# --------------------------------------------------------------------------- reading a run folder


class NoData(Exception):
    """A figure cannot be drawn from what the run folder holds; the message says what is missing."""


def _num(v: Any) -> float | None:
    """A finite float, or None for missing/NaN/non-numeric values."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _as_bool(s: pd.Series) -> pd.Series:
    """CSV booleans ('True'/'False', possibly blank) as bool, blank = False."""
    if s.dtype == bool:
        return s
    return s.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))


def _read_csv(path: Path) -> pd.DataFrame:
    return read_csv(path)


@dataclass(frozen=True)
class SweepRun:
    """A sweep folder's saved results; `missing` says, one line each, what a complete run would also have."""

    run_dir: Path
    name: str  # sweep name = Optuna study name (sweep.json options.name, else the folder name)
    info: dict[str, Any]  # sweep.json ({} when missing)
    trials: pd.DataFrame  # one row per trial (trials.csv, or rebuilt from ray/)
    history: pd.DataFrame  # one row per trial and epoch (history.csv, or rebuilt from ray/)
    missing: tuple[str, ...] = ()  # what is absent or unfinished, for the reader
    notes: tuple[str, ...] = ()  # how the report got its tables (e.g. rebuilt from ray/)
    confirm: pd.DataFrame | None = None  # confirm_summary.csv of `sweeper confirm`, when it has been run

    @property
    def synthetic(self) -> bool | None:
        """Whether sweep.json says the data is synthetic (None: unknown)."""
        return (self.info.get("data") or {}).get("synthetic")

    @property
    def backbone_trained(self) -> bool | None:
        return (self.info.get("backbone") or {}).get("trained")

    @property
    def planned_trials(self) -> int | None:
        return (self.info.get("options") or {}).get("trials")

    @property
    def baseline(self) -> pd.Series | None:
        """The sweep's own phase-1 trial (the first one, if a resume made two), or None."""
        rows = self.trials[self.trials.baseline] if "baseline" in self.trials else self.trials.iloc[:0]
        return rows.iloc[0] if len(rows) else None

    @property
    def baseline_score(self) -> float | None:
        b = self.baseline
        return None if b is None else _num(b.get(SCORE))

    def ranked(self) -> pd.DataFrame:
        """All trials, best score first; trials without a score (failed before an epoch) last."""
        if self.trials.empty:
            return self.trials
        return self.trials.sort_values([SCORE, "trial"], ascending=[False, True], na_position="last")

    def scored(self) -> pd.DataFrame:
        """Ranked trials that have a score."""
        r = self.ranked()
        return r[r[SCORE].notna()] if not r.empty else r

    def failed(self) -> pd.DataFrame:
        return self.trials[self.trials.status == "ERROR"] if "status" in self.trials else self.trials.iloc[:0]


def run_kind(run_dir: Path) -> str:
    """'sweep' or 'baseline', from the files a run folder holds; anything else is a SweeperError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SweeperError(f"{run_dir}: no such folder")
    # A bare ray/ is not enough: /tmp holds Ray's own session folder of that name.
    if ((run_dir / SWEEP_FILE).is_file() or (run_dir / TRIALS_CSV).is_file()
            or ((run_dir / EXPERIMENT_DIR).is_dir() and (run_dir / SPACE_COPY).is_file())):
        return "sweep"
    if (run_dir / CONFIG_FILE).is_file() or (run_dir / METRICS_FILE).is_file():
        return "baseline"
    raise SweeperError(f"{run_dir}: not a run folder (no {SWEEP_FILE} or {TRIALS_CSV} of a sweep, "
                       f"no {CONFIG_FILE} or {METRICS_FILE} of a baseline run)")


def _rebuild_tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """trials and history from the Ray experiment (in memory: the run folder is not written)."""
    from sweeper.space import load_space
    from sweeper.tune import collect

    space_path = run_dir / SPACE_COPY
    if not space_path.is_file():
        raise SweeperError(f"{space_path} is missing, so ray/ cannot be read into tables")
    trials, history = collect(run_dir, load_space(space_path))
    return trials, history, f"{TRIALS_CSV} and {HISTORY_CSV} were not written; this report rebuilt them from ray/"


def load_sweep(run_dir: Path) -> SweepRun:
    """Read a sweep folder (complete or half-written) into a `SweepRun` without changing it."""
    run_dir = Path(run_dir)
    if run_kind(run_dir) != "sweep":
        raise SweeperError(f"{run_dir}: not a sweep folder (no {SWEEP_FILE}, {TRIALS_CSV} or {EXPERIMENT_DIR}/)")
    missing: list[str] = []
    notes: list[str] = []
    info: dict[str, Any] = {}
    if (run_dir / SWEEP_FILE).is_file():
        info = read_json(run_dir / SWEEP_FILE)
        if "wall_seconds" not in info:  # the CLI adds it when the search returns
            missing.append(f"{SWEEP_FILE} has no wall_seconds: the sweep did not finish (killed, or still running)")
    else:
        missing.append(f"{SWEEP_FILE}: missing, so the data kind (synthetic or real), the backbone and the "
                       f"planned number of trials are unknown")

    trials, history = pd.DataFrame(), pd.DataFrame()
    if (run_dir / TRIALS_CSV).is_file():
        trials = _read_csv(run_dir / TRIALS_CSV)
        if (run_dir / HISTORY_CSV).is_file():
            history = _read_csv(run_dir / HISTORY_CSV)
        else:
            missing.append(f"{HISTORY_CSV}: missing, so there are no per-epoch curves or per-class IoU")
    elif (run_dir / EXPERIMENT_DIR).is_dir():
        try:
            trials, history, note = _rebuild_tables(run_dir)
            notes.append(note)
            missing.append(f"{TRIALS_CSV} and {HISTORY_CSV}: not written (the sweep did not finish)")
        except (SweeperError, ImportError) as e:
            missing.append(f"{TRIALS_CSV}: missing, and ray/ could not be read ({str(e).splitlines()[0]})")
    else:
        missing.append(f"{TRIALS_CSV} and {EXPERIMENT_DIR}/: missing, so no trial has results yet")

    if not trials.empty:
        if SCORE not in trials:
            raise SweeperError(f"{run_dir / TRIALS_CSV}: no {SCORE} column, so trials cannot be ranked")
        for col in ("baseline", "stopped_early"):
            trials[col] = _as_bool(trials[col]) if col in trials else False
        trials[SCORE] = pd.to_numeric(trials[SCORE], errors="coerce")
    if not history.empty and "baseline" in history:
        history["baseline"] = _as_bool(history["baseline"])

    confirm = _read_csv(run_dir / CONFIRM_SUMMARY_CSV) if (run_dir / CONFIRM_SUMMARY_CSV).is_file() else None
    run = SweepRun(run_dir=run_dir, name=(info.get("options") or {}).get("name") or run_dir.name, info=info,
                   trials=trials, history=history, confirm=confirm)
    missing += _trial_gaps(run)
    if (run_dir / STUDY_FILE).is_file():
        check_sqlite(run_dir / STUDY_FILE)  # before report/ is written: a damaged study is one line
    else:
        missing.append(f"{STUDY_FILE}: missing, so no hyperparameter importance")
    return dataclasses.replace(run, missing=tuple(missing), notes=tuple(notes))


def _trial_gaps(run: SweepRun) -> list[str]:
    """Lines on trials that are absent or unfinished, and on the baseline trial."""
    out = []
    t = run.trials
    planned = run.planned_trials
    if planned and len(t) < planned:
        out.append(f"{planned - len(t)} of {planned} planned trials have no results (never started)")
    if t.empty:
        return out
    if "status" in t:
        open_ = t[~t.status.isin(["TERMINATED", "ERROR"])]
        if len(open_):
            ids = ", ".join(str(i) for i in open_.trial)
            out.append(f"{len(open_)} trial(s) did not finish ({', '.join(sorted(set(open_.status)))}): "
                       f"trial {ids}; their scores are partial")
    b = run.baseline
    if b is None:
        out.append("no baseline trial (phase-1 settings) in this sweep: no comparison with the sweep's own baseline")
    elif run.baseline_score is None:
        out.append(f"the baseline trial {int(b.trial)} has no score ({b.get('status')}): "
                   f"no comparison with the sweep's own baseline")
    elif _num(b.get("epochs_run")) is not None and _num(b.get("epochs_planned")) is not None \
            and b.epochs_run < b.epochs_planned:
        out.append(f"the baseline trial {int(b.trial)} ran {int(b.epochs_run)} of {int(b.epochs_planned)} epochs: "
                   f"its score is partial")
    return out


# --------------------------------------------------------------------------- wording shared by page and summary


def _fmt(v: Any, digits: int = 4) -> str:
    f = _num(v)
    return "—" if f is None else f"{f:.{digits}f}"


def _delta(value: float | None, ref: float | None) -> str:
    """'+0.0123 (+4.1%)': absolute and relative difference, or '—'."""
    if value is None or ref is None:
        return "—"
    rel = f" ({(value - ref) / ref:+.1%})" if ref else ""
    return f"{value - ref:+.4f}{rel}"


def describe_trial(row: pd.Series) -> str:
    """'adamw, lr 1.2e-03, cosine, class weights log, batch 8': what sets a trial apart, in a few words."""
    parts = [str(row.get("optimizer", "?"))]
    if _num(row.get("lr")) is not None:
        parts.append(f"lr {row['lr']:.1e}")
    for key, label in (("schedule", ""), ("class_weights", "class weights "), ("batch_size", "batch ")):
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            parts.append(f"{label}{int(v) if isinstance(v, float) and v.is_integer() else v}")
    return ", ".join(parts)


def trial_label(row: pd.Series) -> str:
    return f"trial {int(row.trial)}" + (" (baseline)" if row.get("baseline") else "")


def banner(synthetic: bool | None, trained: bool | None) -> str | None:
    """The warning a reader must see before any number, or None for real data and a trained backbone."""
    if synthetic and trained is False:
        return SYNTHETIC_BANNER
    if synthetic:
        return "SYNTHETIC data: numbers show the machinery works, they say nothing about the real task"
    if trained is False:
        return "UNTRAINED random backbone: numbers say nothing about what DINOv2 features can do"
    if synthetic is None:
        return "Data kind unknown (no run description): the numbers may come from synthetic data"
    return None


def _comparability(synthetic: bool | None, trained: bool | None) -> str:
    """What a difference from 0.2971 means here: '' when it compares like with like."""
    if synthetic or trained is False:
        what = " and ".join(w for w, on in (("data", synthetic), ("backbone", trained is False)) if on)
        return f"; not comparable: different {what}, shown for orientation only"
    if synthetic is None:
        return "; comparable only if this ran on the real data with a trained backbone (no run description)"
    return ""


def sweep_headline(run: SweepRun) -> list[tuple[str, str]]:
    """(label, text) lines: best trial vs the sweep's baseline trial and vs the published figure, both metrics."""
    lines: list[tuple[str, str]] = []
    scored = run.scored()
    base, base_score = run.baseline, run.baseline_score
    base_miou = None if base is None else _num(base.get("best_val_miou"))
    if scored.empty:
        return [("Best trial", "no trial has a score yet"), ("Trials", _trial_counts(run))]
    best = scored.iloc[0]
    best_score, best_miou = float(best[SCORE]), _num(best.get("best_val_miou"))
    best_epoch = _num(best.get("best_epoch"))
    at = f" at epoch {int(best_epoch)}" if best_epoch is not None else ""
    who = f"{trial_label(best)}: {describe_trial(best)}"
    if base is not None and best.trial == base.trial:
        who += " — no sampled trial beat the baseline trial"
    lines.append(("Best trial", f"{who}; val IoU {best_score:.4f}{at} (phase-1 per-batch), "
                                f"val mIoU {_fmt(best_miou)} (dataset-level)"))
    if base_score is not None:
        lines.append((f"vs this sweep's baseline trial {int(base.trial)} (phase-1 settings; IoU {base_score:.4f}, "
                      f"mIoU {_fmt(base_miou)})",
                      f"IoU {_delta(best_score, base_score)}; mIoU {_delta(best_miou, base_miou)}"))
    else:
        lines.append(("vs this sweep's baseline trial", "— (no baseline trial with a score)"))
    published = (f"IoU {_delta(best_score, PUBLISHED_BASELINE_IOU)} (phase 1 published no mIoU)"
                 + _comparability(run.synthetic, run.backbone_trained))
    lines.append((f"vs the {PUBLISHED_LABEL} ({PUBLISHED_BASELINE_IOU})", published))
    lines.append(("Trials", _trial_counts(run)))
    return lines


def _trial_counts(run: SweepRun) -> str:
    t = run.trials
    status = t.status if "status" in t else pd.Series([], dtype=str)
    done = int((status == "TERMINATED").sum())
    stopped = int((t.stopped_early & (status == "TERMINATED")).sum()) if "stopped_early" in t else 0
    failed = int((status == "ERROR").sum())
    other = len(t) - done - failed
    planned = f" of {run.planned_trials} planned" if run.planned_trials else ""
    text = f"{len(t)}{planned}: {done} finished ({stopped} stopped early by ASHA), {failed} failed"
    return text + (f", {other} unfinished" if other else "")


# --------------------------------------------------------------------------- sweep figures


def _palette(values) -> dict[str, Any]:
    """Optimiser colours: fixed for the known ones, then seaborn 'deep' colours that no reference uses."""
    deep = sns.color_palette("deep", 10)
    extra = iter(deep[i] for i in (3, 5, 6, 8, 9))  # 0-2 are sgd/adam/adamw, 4 the baseline's purple, 7 grey
    return {v: OPTIMIZER_COLORS.get(str(v)) or next(extra) for v in sorted(set(map(str, values)))}


def _baseline_refs(ax, run: SweepRun) -> None:
    """The two horizontal references every score figure shares."""
    reference_line(ax, PUBLISHED_BASELINE_IOU, kind="published", label=f"{PUBLISHED_LABEL}: {PUBLISHED_BASELINE_IOU}")
    if run.baseline_score is not None:
        reference_line(ax, run.baseline_score, kind="baseline",
                       label=f"baseline trial {int(run.baseline.trial)} (this sweep): {run.baseline_score:.4f}")


def val_iou_curves_axes(ax, history: pd.DataFrame, *, baseline_trial: int | None, baseline_label: str,
                        stopped: Sequence[int] = ()) -> None:
    """Val IoU per epoch: one line per non-baseline trial coloured by optimiser, the baseline trial
    and the published phase-1 curve as reference curves, an x where ASHA stopped a trial."""
    others = history[history.trial != baseline_trial] if baseline_trial is not None else history
    others = others[others.val_iou.notna()]
    if len(others):
        pal = _palette(others.optimizer)
        sns.lineplot(data=others.assign(optimizer=others.optimizer.astype(str)), x="epoch", y="val_iou",
                     hue="optimizer", hue_order=list(pal), palette=pal, units="trial", estimator=None,
                     marker="o", markersize=3, linewidth=1.2, alpha=0.75, ax=ax)
        ends = others[others.trial.isin(stopped)].sort_values("epoch").groupby("trial").tail(1)
        if len(ends):
            ax.scatter(ends.epoch, ends.val_iou, marker="x", s=45, color="0.1", zorder=6, label="stopped by ASHA")
    if baseline_trial is not None:
        b = history[history.trial == baseline_trial].sort_values("epoch")
        reference_curve(ax, b.epoch, b.val_iou, kind="baseline", label=baseline_label)
    reference_curve(ax, range(1, len(PHASE1_VAL_IOU) + 1), PHASE1_VAL_IOU, kind="published",
                    label=f"{PUBLISHED_LABEL} (curve)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Val IoU (phase-1 per-batch)")
    if len(others):
        outside_legend(ax, title="optimiser / reference")
    else:  # two lines: the legend fits inside
        ax.legend(loc="best", fontsize="small", title="reference")


def plot_val_iou_curves(run: SweepRun):
    """a. Val IoU per epoch of every trial, with the published phase-1 curve and the baseline trial."""
    h = run.history
    if h.empty or "val_iou" not in h:
        raise NoData(f"no per-epoch history ({HISTORY_CSV} missing or empty)")
    fig, (ax,) = new_figure(width=11.0, height=5.2)
    b = run.baseline
    stopped = run.trials.trial[run.trials.stopped_early].tolist() if "stopped_early" in run.trials else []
    val_iou_curves_axes(ax, h, baseline_trial=None if b is None else int(b.trial), stopped=stopped,
                        baseline_label=f"baseline trial {int(b.trial)} (this sweep)" if b is not None else "")
    ax.set_title(f"Validation IoU per epoch, {h.trial.nunique()} trials")
    return fig


VERDICT_COLORS = {"all": "#2a9d55", "some": "#a6d96a", "none": "#bdbdbd", "baseline": "#8172b3",
                  "failed": "#e07b7b"}  # bar colours by how many references a trial beats


def _verdicts(run: SweepRun) -> tuple[list[tuple[str, float]], Callable[[pd.Series], tuple[str, str]]]:
    """What a trial must beat, and a row -> (legend label, VERDICT_COLORS key) function.

    On synthetic data only the sweep's baseline trial is a fair reference; on real data
    the published 0.2971 is one too.
    """
    refs: list[tuple[str, float]] = []
    if run.baseline_score is not None:
        refs.append(("the baseline trial", run.baseline_score))
    if run.synthetic is False or not refs:
        refs.append((str(PUBLISHED_BASELINE_IOU), PUBLISHED_BASELINE_IOU))

    def verdict(row: pd.Series) -> tuple[str, str]:
        if row.get("baseline"):
            return "baseline trial", "baseline"
        score = _num(row.get(SCORE))
        if score is None:
            return "no score (failed)", "failed"
        beaten = [name for name, v in refs if score > v]
        if not beaten:
            return "does not beat " + " or ".join(n for n, _ in refs), "none"
        if len(beaten) == len(refs):
            return "beats " + " and ".join(beaten), "all"
        return "beats " + beaten[0] + " only", "some"

    return refs, verdict


def plot_ranked_trials(run: SweepRun):
    """b. Every trial's best val IoU as ranked bars, marked beats / does not beat, with both references."""
    df = run.ranked()
    if df.empty:
        raise NoData("no trials yet")
    refs, verdict = _verdicts(run)
    cats = [verdict(r) for _, r in df.iterrows()]
    n = len(df)
    fig, (ax,) = new_figure(width=max(9.0, 0.42 * n + 5.0), height=5.2)
    x = np.arange(n)
    heights = df[SCORE].fillna(0).to_numpy()
    stopped = df.stopped_early.to_numpy() if "stopped_early" in df else np.zeros(n, bool)
    bars = ax.bar(x, heights, color=[VERDICT_COLORS[key] for _, key in cats], edgecolor="0.25", linewidth=0.6)
    for bar, s in zip(bars, stopped):
        if s:
            bar.set_hatch("///")
    if n <= 30:  # values above the bars stay legible up to about this many
        for xi, v in zip(x, df[SCORE]):
            ax.text(xi, (0 if pd.isna(v) else v) + 0.004, "failed" if pd.isna(v) else f"{v:.3f}",
                    ha="center", va="bottom", rotation=90, fontsize="x-small", zorder=5,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})
    _baseline_refs(ax, run)
    ax.set_xticks(x, [f"{int(t)}" for t in df.trial], rotation=0 if n <= 30 else 90)
    ax.set_xlabel("Trial number (ranked by best val IoU)")
    ax.set_ylabel("Best val IoU (phase-1 per-batch)")
    top = max([v for v in heights] + [PUBLISHED_BASELINE_IOU, run.baseline_score or 0])
    ax.set_ylim(0, top * 1.15 + 0.01)
    handles = [Patch(facecolor=VERDICT_COLORS[key], edgecolor="0.25", label=label)
               for label, key in dict.fromkeys(cats)]
    if stopped.any():
        handles.append(Patch(facecolor="white", edgecolor="0.25", hatch="///", label="stopped early by ASHA"))
    handles += [ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith("reference:")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0,
              title="bar colour / reference")
    others = sum(key != "baseline" for _, key in cats)
    winners = sum(key == "all" for _, key in cats)
    ax.set_title(f"Trials ranked by best val IoU\n{winners} of {others} sampled trials beat "
                 f"{' and '.join(name for name, _ in refs)}")
    return fig


def plot_lr_vs_iou(run: SweepRun):
    """c. Learning rate (log x) vs best val IoU, hue = optimiser, marker = class-weight scheme."""
    df = run.scored()
    if df.empty or "lr" not in df:
        raise NoData("no trial with a learning rate and a score yet")
    # column names become the legend's section titles
    df = df.assign(optimiser=df.optimizer.astype(str),
                   **{"class weights": df.class_weights.astype(str) if "class_weights" in df else "none"})
    fig, (ax,) = new_figure(width=11.0, height=5.2)
    pal = _palette(df.optimiser)
    sns.scatterplot(data=df, x="lr", y=SCORE, hue="optimiser", hue_order=list(pal), palette=pal,
                    style="class weights", style_order=sorted(df["class weights"].unique()), s=80,
                    edgecolor="0.2", linewidth=0.5, ax=ax)
    b = run.baseline
    if b is not None and run.baseline_score is not None:
        ax.scatter([b.lr], [run.baseline_score], s=260, facecolors="none",
                   edgecolors=REFERENCE_STYLE["baseline"]["color"],
                   linewidths=2, zorder=6, label=f"baseline trial {int(b.trial)}")
    _baseline_refs(ax, run)
    ax.set_xscale("log")
    ax.set_xlabel("Learning rate (log scale)")
    ax.set_ylabel("Best val IoU (phase-1 per-batch)")
    ax.set_title("Learning rate vs best val IoU")
    outside_legend(ax)
    return fig


def class_iou_table(run: SweepRun, top: int = TOP_CLASS_TRIALS) -> pd.DataFrame:
    """Per-class val IoU at each trial's best epoch: the baseline trial first, then the `top` best others."""
    h, b = run.history, run.baseline
    cols = [c for c in h.columns if c.startswith(CLASS_PREFIX)]
    if not cols:
        raise NoData(f"no per-class IoU in {HISTORY_CSV}")
    if b is None or run.baseline_score is None:
        raise NoData("no baseline trial with a score to compare per class against")
    others = run.scored()
    others = others[others.trial != b.trial].head(top)
    rows = {}
    for _, t in pd.concat([b.to_frame().T, others]).iterrows():
        at = h[(h.trial == t.trial) & (h.epoch == t.best_epoch)]
        if len(at):
            head = f"baseline trial {int(t.trial)}" if t.trial == b.trial else f"trial {int(t.trial)}"
            label = f"{head}, epoch {int(t.best_epoch)}\n" + (
                "absolute IoU" if t.trial == b.trial else describe_trial(t).replace("class weights ", "cw "))
            rows[label] = at.iloc[0][cols].astype(float).to_numpy()
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[c[len(CLASS_PREFIX):] for c in cols])
    if table.empty or not table.index[0].startswith("baseline"):
        raise NoData("the baseline trial's best epoch is not in the history")
    return table


def plot_class_iou_delta(run: SweepRun):
    """d. Heatmap of per-class val IoU minus the baseline trial's (best epochs); the baseline row shows its IoU."""
    if run.history.empty:
        raise NoData(f"no per-epoch history ({HISTORY_CSV} missing or empty)")
    table = class_iou_table(run)
    delta = table - table.iloc[0]
    annot = delta.map(lambda v: "n/a" if pd.isna(v) else f"{round(v, 2) + 0.0:+.2f}")  # + 0.0: no '-0.00'
    annot.iloc[0] = table.iloc[0].map(lambda v: "n/a" if pd.isna(v) else f"{v:.2f}")
    span = max(0.05, float(np.nanmax(np.abs(delta.to_numpy()))) if np.isfinite(delta.to_numpy()).any() else 0.05)
    fig, (ax,) = new_figure(width=12.0, height=2.4 + 0.75 * len(table))
    sns.heatmap(delta, annot=annot.to_numpy(), fmt="", cmap="RdBu", center=0, vmin=-span, vmax=span,
                linewidths=0.5, linecolor="white", cbar_kws={"label": "Δ IoU vs baseline trial"},
                annot_kws={"fontsize": "small"}, ax=ax)
    ax.set_facecolor("0.85")  # NaN cells: class absent from the val split and the predictions
    ax.set_xticks(ax.get_xticks(), delta.columns, rotation=30, ha="right")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_xlabel("Class")
    ax.set_ylabel("Trial (at its best epoch)")
    ax.set_title(f"Per-class val IoU: top {len(table) - 1} trials minus the baseline trial")
    return fig


def plot_asha_budget(run: SweepRun):
    """e. Epochs planned vs run per trial, and the share of the planned epochs ASHA's early stops saved."""
    t = run.trials
    if t.empty or "epochs_planned" not in t:
        raise NoData("no trials yet")
    t = t.sort_values("trial")
    planned = pd.to_numeric(t.epochs_planned, errors="coerce").fillna(0).to_numpy()
    ran = pd.to_numeric(t.epochs_run, errors="coerce").fillna(0).to_numpy()
    status = t.status.astype(str).to_numpy()
    kind = np.where(status == "ERROR", "failed", np.where(
        t.stopped_early.to_numpy(), "stopped early by ASHA",
        np.where(status == "TERMINATED", "ran all planned epochs", "unfinished")))
    colors = {"ran all planned epochs": "#4c72b0", "stopped early by ASHA": "#dd8452", "failed": "#e07b7b",
              "unfinished": "#bdbdbd"}
    saved = float((planned - ran)[kind == "stopped early by ASHA"].sum())
    total = float(planned.sum())
    n = len(t)
    fig, (ax,) = new_figure(width=max(9.0, 0.42 * n + 5.0), height=4.8)
    x = np.arange(n)
    ax.bar(x, planned, width=0.8, color="white", edgecolor="0.35", linewidth=1.0, label="planned epochs")
    for k, c in colors.items():
        m = kind == k
        if m.any():
            ax.bar(x[m], ran[m], width=0.55, color=c, edgecolor="0.25", linewidth=0.5, label=f"run: {k}")
    labels = [f"{int(i)}" + ("\nbase" if b else "") for i, b in zip(t.trial, t.baseline)]
    ax.set_xticks(x, labels)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Trial number")
    ax.set_ylabel("Epochs")
    share = f"{saved / total:.0%}" if total else "—"
    ax.set_title(f"Epochs per trial: ASHA early stopping saved {saved:.0f} of {total:.0f} planned epochs ({share})")
    lost = float((planned - ran)[kind == "failed"].sum())
    if lost:
        ax.annotate(f"{lost:.0f} planned epochs of failed trials are not counted as saved", xy=(0, 1.0),
                    xycoords="axes fraction", xytext=(0, -12), textcoords="offset points", fontsize="x-small")
    outside_legend(ax)
    return fig


@dataclass(frozen=True)
class Importance:
    """Hyperparameter importances from an Optuna study, and what they were computed from."""

    values: dict[str, float]  # param -> share of the objective's variation (sums to 1)
    evaluator: str  # which importance method, for the figure title
    trials: int  # completed study trials used
    conditional: tuple[str, ...]  # params set in only some trials: not ranked


def param_importances(study_path: Path, study_name: str) -> Importance:
    """Importances of the params every completed trial has, from an Optuna SQLite study (read-only);
    NoData when there are too few trials or nothing varied."""
    import optuna

    if not study_path.is_file():
        raise NoData(f"{STUDY_FILE} is missing")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # read-only URI: a report must never change the study it reads
    storage = f"sqlite:///file:{study_path.resolve()}?mode=ro&uri=true"
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise NoData(f"{STUDY_FILE} holds no study named '{study_name}'") from None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        raise NoData(f"too few completed trials for hyperparameter importance: {len(complete)} "
                     f"(at least {MIN_IMPORTANCE_TRIALS} needed)")
    # A conditional param (momentum: sgd only) would be scored on a different subset of trials
    # than the others, so only the params every trial has are ranked against each other.
    names = [set(t.params) for t in complete]
    shared = sorted(set.intersection(*names))
    conditional = tuple(sorted(set.union(*names) - set(shared)))
    if not shared:
        raise NoData("no hyperparameter is set in every completed trial")
    try:  # PED-ANOVA: deterministic, and needs no scikit-learn (fANOVA does)
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    except AttributeError:  # optuna < 3.6
        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA, seed 0"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=shared)
        except (ImportError, ValueError, RuntimeError) as e:
            raise NoData(f"importance could not be computed: {str(e).splitlines()[0]}") from None
    for w in caught:
        if "too small" in str(w.message):  # PED-ANOVA then returns equal shares: no information
            raise NoData(f"too few completed trials for hyperparameter importance ({len(complete)})")
        log.info("param importance: %s", w.message)
    if not values or not any(values.values()):
        raise NoData("no hyperparameter varied across the completed trials")
    return Importance(dict(values), name, len(complete), conditional)


def plot_param_importance(run: SweepRun):
    """f. Hyperparameter importance for the study's objective, from the Optuna study in study.db."""
    imp = param_importances(run.run_dir / STUDY_FILE, run.name)
    s = pd.Series(imp.values).sort_values(ascending=True)
    fig, (ax,) = new_figure(width=9.0, height=1.8 + 0.42 * len(s))
    ax.barh(s.index, s.to_numpy(), color="#4c72b0", edgecolor="0.25", linewidth=0.5)
    for y, v in enumerate(s.to_numpy()):
        ax.text(v + 0.005, y, f"{v:.2f}", va="center", fontsize="small")
    ax.set_xlim(0, max(1e-9, float(s.max())) * 1.15)
    note = ("\n" + textwrap.fill(f"not ranked (set in only some trials): {', '.join(imp.conditional)}", 80)
            if imp.conditional else "")
    ax.set_xlabel(f"Importance (share of the objective's variation; sums to 1){note}")
    ax.set_ylabel("Hyperparameter")
    ax.set_title(f"Hyperparameter importance ({imp.evaluator}, {imp.trials} completed trials)")
    return fig


@dataclass(frozen=True)
class FigureSpec:
    """One figure of a report: its file, heading, what it shows, and the function that draws it."""

    file: str  # PNG name inside report/
    heading: str  # heading on the page (also the title of a 'cannot draw' figure)
    caption: str  # what the reader sees, one or two sentences
    draw: Callable[[Any], Any] = field(repr=False)  # source -> matplotlib figure; raises NoData


SWEEP_FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("val_iou_curves.png", "Validation IoU per epoch",
               "Every trial's val IoU per epoch, coloured by optimiser (x: stopped by ASHA), with this sweep's "
               "baseline trial and the published phase-1 curve on the real data as reference curves.",
               plot_val_iou_curves),
    FigureSpec("ranked_trials.png", "Trials ranked by best val IoU",
               "Each trial's best val IoU; colour says whether it beats the references (on synthetic data only "
               "the baseline trial counts), hatching marks trials ASHA stopped early (their score is from fewer "
               "epochs).", plot_ranked_trials),
    FigureSpec("lr_vs_iou.png", "Learning rate vs best val IoU",
               "Learning rate (log scale) against best val IoU; colour = optimiser, marker = class-weight scheme.",
               plot_lr_vs_iou),
    FigureSpec("class_iou_delta.png", "Per-class IoU vs the baseline trial",
               f"Per-class val IoU of the top {TOP_CLASS_TRIALS} trials minus the baseline trial's, each at its "
               "best epoch (blue: better, red: worse); the first row shows the baseline's own IoU.",
               plot_class_iou_delta),
    FigureSpec("asha_budget.png", "Epoch budget and ASHA early stopping",
               "Planned (outline) vs run (filled) epochs per trial; the title gives the share of all planned "
               "epochs that ASHA's early stops saved.", plot_asha_budget),
    FigureSpec("param_importance.png", "Hyperparameter importance",
               "How much of the variation in the study's objective each hyperparameter explains, from the Optuna "
               "study in study.db (a trial stopped early counts with its last score). Params set in only some "
               "trials are not ranked. With a few dozen trials or fewer this is a hint, not a finding.",
               plot_param_importance),
)


def render_figures(specs: Sequence[FigureSpec], source: Any, out_dir: Path) -> list[tuple[FigureSpec, Path]]:
    """Draw and save each figure; one that cannot be drawn becomes a figure saying why."""
    written = []
    for spec in specs:
        try:
            fig = spec.draw(source)
        except NoData as e:
            log.info("%s: %s", spec.file, e)
            fig = message_figure(spec.heading, f"Not drawn: {e}")
        written.append((spec, save_figure(fig, out_dir / spec.file)))
    return written


# --------------------------------------------------------------------------- the page and the summary

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1300px;padding:1rem 2rem;
color:#222;line-height:1.45}
h1{margin-bottom:.2rem}.meta{color:#555;margin-top:0}
.banner{background:#b00020;color:#fff;font-weight:700;font-size:1.15rem;padding:.9rem 1.2rem;border-radius:6px;
margin:1rem 0}
.headline{border-collapse:collapse;margin:.5rem 0 1rem}.headline th{text-align:left;padding:.3rem 1rem .3rem 0;
vertical-align:top;color:#444;font-weight:600}.headline td{padding:.3rem 0}
.missing{background:#fff4e5;border-left:5px solid #f0a020;padding:.5rem 1rem}
.failed{background:#fdecea;border-left:5px solid #d33;padding:.5rem 1rem}
figure{margin:1.5rem 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.92rem}
table.trials{border-collapse:collapse;font-size:.85rem;width:100%}
table.trials th,table.trials td{border-bottom:1px solid #ddd;padding:.25rem .45rem;text-align:right;white-space:nowrap}
table.trials th{background:#f2f2f2;cursor:pointer;position:sticky;top:0;user-select:none}
table.trials th:hover{background:#e2e2e2}table.trials th[data-dir=asc]::after{content:" \\25B2"}
table.trials th[data-dir=desc]::after{content:" \\25BC"}
table.trials td.text{text-align:left;white-space:normal}tr.baseline{background:#f0ecfa}tr.best{background:#e7f6ea}
tr.error{background:#fdecea}.scroll{overflow-x:auto;max-height:80vh}
dl.metrics dt{font-weight:600}dl.metrics dd{margin:0 0 .5rem 1rem}
"""

# Click a header to sort by it (again to reverse); empty cells always sort last.
SORT_JS = """
document.querySelectorAll("table.trials th").forEach((th, i) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], asc = th.dataset.dir !== "asc";
  th.parentNode.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? "asc" : "desc";
  const val = r => r.cells[i].dataset.v;
  [...body.rows].sort((a, b) => {
    const x = val(a), y = val(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const nx = Number(x), ny = Number(y);
    const c = !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y);
    return asc ? c : -c;
  }).forEach(r => body.appendChild(r));
}));
"""

METRICS_NOTE = (
    ("Val IoU (phase-1 per-batch)", "phase 1's metric: IoU scored on each validation batch of 2 images and "
     "averaged over batches. The published 0.2971 is this number; it depends on batch composition."),
    ("Val mIoU (dataset-level)", "the usual mIoU: per-class IoU from one confusion matrix over the whole "
     "validation split, averaged over classes present. Phase 1 did not report it."),
)

# (trials.csv column, header, kind): kind 'text' is left-aligned and sorted as text.
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("trial", "trial", "int"), ("status", "status", "text"), ("optimizer", "optimiser", "text"),
    ("lr", "lr", "sci"), ("momentum", "momentum", "num"), ("weight_decay", "weight decay", "sci"),
    ("schedule", "schedule", "text"), ("warmup_epochs", "warm-up ep.", "num"),
    ("class_weights", "class weights", "text"), ("class_weight_power", "cw power", "num"),
    ("class_weight_max", "cw max", "num"), ("batch_size", "batch", "int"), ("epochs_planned", "ep. planned", "int"),
    ("epochs_run", "ep. run", "int"), ("stopped_early", "stopped early", "bool"),
    (SCORE, "best val IoU", "num"), ("best_epoch", "best ep.", "int"), ("best_val_miou", "best val mIoU", "num"),
    ("delta_vs_baseline", "Δ vs baseline", "signed"), ("delta_vs_published", "Δ vs 0.2971", "signed"),
    ("wall_seconds", "wall s", "int"), ("error", "error", "text"),
)


def _cell(v: Any, kind: str) -> tuple[str, str]:
    """(text shown, sort key) of a table cell."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or (kind != "text" and _num(v) is None
                                                                   and kind != "bool"):
        return "—", ""
    if kind == "bool":
        return ("yes" if v else "no"), ("1" if v else "0")
    if kind == "text":
        return str(v), str(v)
    f = float(v)
    text = {"int": f"{f:.0f}", "sci": f"{f:.2e}", "signed": f"{f:+.4f}"}.get(kind, f"{f:.4f}")
    return text, repr(f)


def table_frame(run: SweepRun) -> pd.DataFrame:
    """The trials with deltas recomputed from the scores (the same numbers as the headline)."""
    t = run.ranked().copy()
    if t.empty:
        return t
    base = run.baseline_score
    t["delta_vs_baseline"] = t[SCORE] - base if base is not None else math.nan
    t["delta_vs_published"] = t[SCORE] - PUBLISHED_BASELINE_IOU
    return t


def trials_table_html(run: SweepRun) -> str:
    """The sortable trials table: one <tr> per trial in <tbody>, best first."""
    t = table_frame(run)
    if t.empty:
        return "<p>No trials yet.</p>"
    cols = [(c, h, k) for c, h, k in TABLE_COLUMNS if c in t.columns]
    best = run.scored().trial.iloc[0] if len(run.scored()) else None
    head = "".join(f'<th title="click to sort">{html.escape(h)}</th>' for _, h, _ in cols)
    rows = []
    for _, r in t.iterrows():
        cls = " ".join(c for c, on in (("baseline", r.get("baseline")), ("best", r.trial == best),
                                       ("error", r.get("status") == "ERROR")) if on)
        cells = []
        for c, _, k in cols:
            text, key = _cell(r.get(c), k)
            if c == "trial" and r.get("baseline"):
                text += " (baseline)"
            align = ' class="text"' if k == "text" else ""
            cells.append(f'<td data-v="{html.escape(key)}"{align}>{html.escape(text)}</td>')
        attrs = f' class="{cls}"' if cls else ""
        rows.append(f'<tr{attrs} data-trial="{int(r.trial)}">' + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="trials" id="trials"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _page(title: str, meta: str, warning: str | None, headline: Sequence[tuple[str, str]], missing: Sequence[str],
          figures: Sequence[tuple[FigureSpec, Path]], extra: str = "") -> str:
    """The one page layout both report kinds share."""
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{meta}</p>']
    if warning:
        parts.append(f'<div class="banner" id="banner" role="alert">{html.escape(warning)}</div>')
    parts.append('<section id="headline"><h2>Headline</h2><table class="headline">')
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline]
    parts.append("</table>")
    parts.append('<dl class="metrics">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                                  for k, v in METRICS_NOTE) + "</dl></section>")
    if missing:
        parts.append('<section id="missing" class="missing"><h2>Missing or unfinished</h2><ul>'
                     + "".join(f"<li>{html.escape(m)}</li>" for m in missing) + "</ul></section>")
    parts.append(extra)
    parts.append('<section id="figures"><h2>Figures</h2>')
    for spec, path in figures:
        parts.append(f'<figure id="{path.stem}"><h3>{html.escape(spec.heading)}</h3>{_img_tag(path, spec.heading)}'
                     f"<figcaption>{html.escape(spec.caption)} <code>{path.name}</code></figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def _meta_line(run_dir: Path, info: dict[str, Any]) -> str:
    data, bb = info.get("data") or {}, info.get("backbone") or {}
    bits = [f"Run folder <code>{html.escape(str(run_dir.resolve()))}</code>"]
    if data:
        kind = "synthetic" if data.get("synthetic") else "real"
        bits.append(f"data: {kind}, {data.get('train_images', '?')} train / {data.get('val_images', '?')} val images "
                    f"(<code>{html.escape(str(data.get('root', '?')))}</code>)")
    if bb:
        bits.append(f"backbone: {html.escape(str(bb.get('description') or bb.get('name')))}")
    bits.append(f"report written {time.strftime('%Y-%m-%d %H:%M')} from saved results only")
    return "; ".join(bits)


def sweep_html(run: SweepRun, figures: Sequence[tuple[FigureSpec, Path]]) -> str:
    """The sweep's index.html: headline, missing parts, failed trials, figures, sortable table."""
    failed = run.failed()
    extra = ""
    if len(failed):
        extra = ('<section id="failed" class="failed"><h2>Failed trials</h2><ul>'
                 + "".join(f"<li>trial {int(r.trial)} ({html.escape(describe_trial(r))}): "
                           f"<code>{html.escape(str(r.get('error') or 'no error text saved'))}</code></li>"
                           for _, r in failed.iterrows()) + "</ul></section>")
    if run.notes:
        extra += "<p>" + " ".join(html.escape(n) for n in run.notes) + "</p>"
    extra += confirm_html(run)
    body = _page(f"Sweep report: {run.name}", _meta_line(run.run_dir, run.info),
                 banner(run.synthetic, run.backbone_trained), sweep_headline(run), run.missing, figures, extra)
    return (body + '\n<section id="table"><h2>All trials</h2><p>Click a column header to sort.</p>'
            + trials_table_html(run) + f"</section>\n<script>{SORT_JS}</script>\n</body></html>\n")


def confirm_rows(run: SweepRun) -> tuple[list[str], list[list[str]]]:
    """The confirm summary as table rows: each config's mean and spread over seeds, gain, verdict."""
    header = ["trial", "seeds", "mean best val IoU", "std", "min", "max", "gain vs baseline", "verdict"]
    rows = []
    for _, r in run.confirm.iterrows():
        is_base = str(r.get("baseline")).lower() == "true"
        verdict = ("reference" if is_base else
                   "real: gain > 2x seed spread" if str(r.get("gain_exceeds_spread")).lower() == "true"
                   else "within seed noise")
        rows.append([f"{int(r.trial)}{' (phase 1)' if is_base else ''}", str(int(r.seeds)), _fmt(r["mean"]),
                     _fmt(r["std"]), _fmt(r["min"]), _fmt(r["max"]), _cell(r["gain_vs_baseline"], "signed")[0],
                     verdict])
    return header, rows


def confirm_html(run: SweepRun) -> str:
    """The 'is the winner real?' section, when `sweeper confirm` has been run."""
    if run.confirm is None or run.confirm.empty:
        return ""
    header, rows = confirm_rows(run)
    return ('<section id="confirm"><h2>Is the winner real? (sweeper confirm)</h2><p>Each config re-trained with '
            'several seeds; a gain counts as real when it exceeds twice the larger seed-to-seed standard '
            'deviation.</p><table class="confirm"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                             for r in rows) + "</tbody></table></section>")


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|~!&{}"} | {"\n": " ", "\r": " "})


def md_text(text: object) -> str:
    """Text as literal Markdown on one line: run names, paths and error messages render as written, never
    as markup or HTML (index.html escapes the same strings with html.escape)."""
    return str(text).translate(_MD_SPECIAL)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_text(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _md(title: str, warning: str | None, headline: Sequence[tuple[str, str]], missing: Sequence[str]) -> list[str]:
    out = [f"# {md_text(title)}", ""]
    if warning:
        out += [f"> **{md_text(warning)}**", ""]
    out += ["## Headline", ""] + [f"- **{md_text(k)}**: {md_text(v)}" for k, v in headline] + [""]
    if missing:
        out += ["## Missing or unfinished", ""] + [f"- {md_text(m)}" for m in missing] + [""]
    return out


def sweep_summary_md(run: SweepRun, top: int = TOP_SUMMARY) -> str:
    """summary.md: the headline and the top trials as a Markdown table."""
    out = _md(f"Sweep report: {run.name}", banner(run.synthetic, run.backbone_trained), sweep_headline(run),
              run.missing)
    t = table_frame(run)
    t = t[t[SCORE].notna()].head(top) if not t.empty else t
    out += [f"## Top {top} trials by best val IoU", ""]
    if t.empty:
        out += ["No trial has a score yet.", ""]
    else:
        header = ["rank", "trial", "status", "settings", "epochs run", "best val IoU", "best val mIoU",
                  "Δ vs baseline trial", "Δ vs 0.2971"]
        rows = [[str(i), trial_label(r), str(r.get("status", "")), describe_trial(r),
                 _cell(r.get("epochs_run"), "int")[0],
                 _fmt(r[SCORE]), _fmt(r.get("best_val_miou")), _cell(r.get("delta_vs_baseline"), "signed")[0],
                 _cell(r.get("delta_vs_published"), "signed")[0]] for i, (_, r) in enumerate(t.iterrows(), 1)]
        out += [_md_table(header, rows), ""]
    if run.confirm is not None and not run.confirm.empty:
        out += ["## Is the winner real? (sweeper confirm)", "", _md_table(*confirm_rows(run)), ""]
    failed = run.failed()
    if len(failed):
        out += ["## Failed trials", ""] + [f"- trial {int(r.trial)}: {md_text(r.get('error'))}" for _, r in failed.iterrows()]
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- baseline run folders


@dataclass(frozen=True)
class BaselineRun:
    """A `python -m sweeper baseline` folder: its config.json and per-epoch records."""

    run_dir: Path
    info: dict[str, Any]  # config.json ({} when missing)
    history: tuple[dict[str, Any], ...]  # metrics.jsonl records
    missing: tuple[str, ...] = ()


def load_baseline(run_dir: Path) -> BaselineRun:
    """Read a baseline run folder (complete or not) without changing it."""
    run_dir = Path(run_dir)
    missing = []
    info = read_json(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else {}
    if not info:
        missing.append(f"{CONFIG_FILE}: missing, so the data kind and the configuration are unknown")
    history = tuple(read_jsonl(run_dir / METRICS_FILE)) if (run_dir / METRICS_FILE).is_file() else ()
    planned = (info.get("config") or {}).get("epochs")
    if not history:
        missing.append(f"{METRICS_FILE}: missing or empty, so no epoch finished")
    elif planned and len(history) < planned:
        missing.append(f"only {len(history)} of {planned} epochs finished: the run was stopped or is still running")
    return BaselineRun(run_dir=run_dir, info=info, history=history, missing=tuple(missing))


def plot_baseline_val_iou(run: BaselineRun):
    """This run's val IoU per epoch against the published phase-1 curve."""
    h = pd.DataFrame(run.history)
    if h.empty or "val_iou" not in h:
        raise NoData(f"no epoch in {METRICS_FILE}")
    h = h.assign(trial=0, optimizer=(run.info.get("config") or {}).get("optimizer", "sgd"))
    fig, (ax,) = new_figure(width=10.0, height=5.0)
    val_iou_curves_axes(ax, h, baseline_trial=0, baseline_label="this run")
    ax.set_title("Validation IoU per epoch: this run vs the published phase-1 curve")
    return fig


def plot_baseline_curves(run: BaselineRun):
    """Phase 1's combined 2x2 figure (loss, IoU, Dice, accuracy; train and val)."""
    if not run.history:
        raise NoData(f"no epoch in {METRICS_FILE}")
    return phase1_figure(run.history, "all_metrics_curves.png")


BASELINE_FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("val_iou_vs_phase1.png", "Validation IoU vs the published phase-1 curve",
               "This run's val IoU per epoch with the published phase-1 curve on the real data.",
               plot_baseline_val_iou),
    FigureSpec("all_metrics_curves.png", "Training curves (phase 1's four panels)",
               "Loss, IoU, Dice and pixel accuracy per epoch, train and val, as phase 1 drew them.",
               plot_baseline_curves),
)


def baseline_headline(run: BaselineRun) -> list[tuple[str, str]]:
    """(label, text) lines: best val IoU vs the published figure, and mIoU."""
    if not run.history:
        return [("Best val IoU", "no epoch finished")]
    best = max(run.history, key=lambda r: (_num(r.get("val_iou")) or -1.0, -r["epoch"]))
    iou = _num(best.get("val_iou"))
    synthetic = (run.info.get("data") or {}).get("synthetic")
    trained = (run.info.get("backbone") or {}).get("trained")
    vs = _delta(iou, PUBLISHED_BASELINE_IOU) + _comparability(synthetic, trained)
    planned = (run.info.get("config") or {}).get("epochs", "?")
    return [("Best val IoU", f"{_fmt(iou)} at epoch {best['epoch']} (phase-1 per-batch); "
                             f"val mIoU {_fmt(best.get('val_miou'))} (dataset-level)"),
            (f"vs the {PUBLISHED_LABEL} ({PUBLISHED_BASELINE_IOU})", vs),
            ("Epochs", f"{len(run.history)} of {planned} run")]


def _write_baseline_report(run: BaselineRun, out: Path) -> Path:
    info = run.info
    warning = banner((info.get("data") or {}).get("synthetic"), (info.get("backbone") or {}).get("trained"))
    headline = baseline_headline(run)
    title = f"Baseline run report: {run.run_dir.resolve().name}"
    figures = render_figures(BASELINE_FIGURES, run, out)
    page = _page(title, _meta_line(run.run_dir, info), warning, headline, run.missing, figures)
    write_text_atomic(out / "index.html", page + "\n</body></html>\n")
    write_text_atomic(out / "summary.md", "\n".join(_md(title, warning, headline, run.missing)))
    return out / "index.html"


# --------------------------------------------------------------------------- entry point


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/ (index.html, summary.md, figures) from saved results; return index.html's path."""
    run_dir = Path(run_dir)
    if run_kind(run_dir) == "baseline":
        baseline = load_baseline(run_dir)  # read everything before creating report/
        page = _write_baseline_report(baseline, ensure_writable_dir(run_dir / REPORT_DIR))
    else:
        run = load_sweep(run_dir)
        out = ensure_writable_dir(run_dir / REPORT_DIR)
        figures = render_figures(SWEEP_FIGURES, run, out)
        write_text_atomic(out / "summary.md", sweep_summary_md(run))
        write_text_atomic(out / "index.html", sweep_html(run, figures))
        page = out / "index.html"
    log.debug("report written to %s", page)
    return page
