"""The sweep report's six figures, each drawn from a `SweepRun` (saved results only).

Each `plot_*` returns an open figure or raises `NoData` saying what is missing; `SWEEP_FIGURES` lists them
in page order with their headings and captions. To add a figure: write a `plot_*` here and add its
`FigureSpec` to `SWEEP_FIGURES`.
"""

from __future__ import annotations

import logging
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from sweeper.report.figures import (REFERENCE_STYLE, FigureSpec, NoData, new_figure, optimizer_palette, outside_legend,
                                    reference_line, styled, val_iou_curves_axes)
from sweeper.report.load import SweepRun, num
from sweeper.report.summary import PUBLISHED_LABEL, REFERENCE_METRICS, ranking_words
from sweeper.rundir.layout import HISTORY_CSV, STUDY_FILE
from sweeper.search.tables import describe_trial
from sweeper.training.config import PUBLISHED_BASELINE_IOU

log = logging.getLogger(__name__)

TOP_CLASS_TRIALS = 5  # trials compared per class against the baseline
MIN_IMPORTANCE_TRIALS = 5  # fewer completed study trials give importances that are noise
CLASS_PREFIX = "val_class_iou/"  # history.csv per-class columns
VERDICT_COLORS = {"all": "#2a9d55", "some": "#a6d96a", "none": "#bdbdbd", "baseline": "#8172b3",
                  "failed": "#e07b7b"}  # bar colours by how many references a trial beats


def _baseline_refs(ax: Axes, run: SweepRun) -> None:
    """The two horizontal references every score figure shares (0.2971 only on a val IoU axis: it is one)."""
    if run.objective.metric == "val_iou":
        reference_line(ax, PUBLISHED_BASELINE_IOU, kind="published",
                       label=f"{PUBLISHED_LABEL}: {PUBLISHED_BASELINE_IOU}")
    if run.baseline_score is not None:
        reference_line(ax, run.baseline_score, kind="baseline",
                       label=f"baseline trial {int(run.baseline.trial)} (this sweep): {run.baseline_score:.4f}")


def score_axis(run: SweepRun) -> str:
    """The y label of a figure of trials' scores: 'Best val IoU (phase-1 per-batch)'."""
    kind = {m: k for m, _, k in REFERENCE_METRICS}.get(run.objective.metric)
    return f"Best {run.objective.label}" + (f" ({kind})" if kind else "")


@styled
def plot_val_iou_curves(run: SweepRun) -> Figure:
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


def _verdicts(run: SweepRun) -> tuple[list[tuple[str, float]], Callable[[pd.Series], tuple[str, str]]]:
    """What a trial must beat, and a row -> (legend label, VERDICT_COLORS key) function.

    On synthetic data only the sweep's baseline trial is a fair reference; on real data
    the published 0.2971 is one too.
    """
    refs: list[tuple[str, float]] = []
    if run.baseline_score is not None:
        refs.append(("the baseline trial", run.baseline_score))
    if (run.synthetic is False or not refs) and run.objective.metric == "val_iou":
        refs.append((str(PUBLISHED_BASELINE_IOU), PUBLISHED_BASELINE_IOU))

    def verdict(row: pd.Series) -> tuple[str, str]:
        if row.get("baseline"):
            return "baseline trial", "baseline"
        score = num(row.get(run.score))
        if score is None:
            return "no score (failed)", "failed"
        beaten = [name for name, v in refs if run.objective.gain(score, v) > 0]
        if not beaten:
            return "does not beat " + " or ".join(n for n, _ in refs), "none"
        if len(beaten) == len(refs):
            return "beats " + " and ".join(beaten), "all"
        return "beats " + beaten[0] + " only", "some"

    return refs, verdict


@styled
def plot_ranked_trials(run: SweepRun) -> Figure:
    """b. Every trial's best val IoU as ranked bars, marked beats / does not beat, with both references."""
    df = run.ranked()
    if df.empty:
        raise NoData("no trials yet")
    refs, verdict = _verdicts(run)
    cats = [verdict(r) for _, r in df.iterrows()]
    n = len(df)
    fig, (ax,) = new_figure(width=max(9.0, 0.42 * n + 5.0), height=5.2)
    x = np.arange(n)
    heights = df[run.score].fillna(0).to_numpy()
    stopped = df.stopped_early.to_numpy() if "stopped_early" in df else np.zeros(n, bool)
    bars = ax.bar(x, heights, color=[VERDICT_COLORS[key] for _, key in cats], edgecolor="0.25", linewidth=0.6)
    for bar, s in zip(bars, stopped):
        if s:
            bar.set_hatch("///")
    if n <= 30:  # values above the bars stay legible up to about this many
        for xi, v in zip(x, df[run.score]):
            ax.text(xi, (0 if pd.isna(v) else v) + 0.004, "failed" if pd.isna(v) else f"{v:.3f}",
                    ha="center", va="bottom", rotation=90, fontsize="x-small", zorder=5,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})
    _baseline_refs(ax, run)
    ax.set_xticks(x, [f"{int(t)}" for t in df.trial], rotation=0 if n <= 30 else 90)
    ax.set_xlabel(f"Trial number (ranked by {ranking_words(run.objective)})")
    ax.set_ylabel(score_axis(run))
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
    ax.set_title(f"Trials ranked by {ranking_words(run.objective)}\n{winners} of {others} sampled trials beat "
                 f"{' and '.join(name for name, _ in refs)}")
    return fig


@styled
def plot_lr_vs_iou(run: SweepRun) -> Figure:
    """c. Learning rate (log x) vs best val IoU, hue = optimiser, marker = class-weight scheme."""
    df = run.scored()
    if df.empty or "lr" not in df:
        raise NoData("no trial with a learning rate and a score yet")
    # column names become the legend's section titles
    df = df.assign(optimiser=df.optimizer.astype(str),
                   **{"class weights": df.class_weights.astype(str) if "class_weights" in df else "none"})
    fig, (ax,) = new_figure(width=11.0, height=5.2)
    pal = optimizer_palette(df.optimiser)
    sns.scatterplot(data=df, x="lr", y=run.score, hue="optimiser", hue_order=list(pal), palette=pal,
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
    ax.set_ylabel(score_axis(run))
    ax.set_title(f"Learning rate vs best {run.objective.label}")
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
                "absolute IoU" if t.trial == b.trial else describe_trial(t, run.dims))
            rows[label] = at.iloc[0][cols].astype(float).to_numpy()
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[c[len(CLASS_PREFIX):] for c in cols])
    if table.empty or not table.index[0].startswith("baseline"):
        raise NoData("the baseline trial's best epoch is not in the history")
    return table


@styled
def plot_class_iou_delta(run: SweepRun) -> Figure:
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


@styled
def plot_asha_budget(run: SweepRun) -> Figure:
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
    """Importances of the params every completed trial has, from an Optuna SQLite study (read-only): the study
    `study_name`, or the one study the database holds; NoData when there are too few trials or nothing varied."""
    import optuna

    if not study_path.is_file():
        raise NoData(f"{STUDY_FILE} is missing")
    # read-only URI: a report must never change the study it reads
    storage = f"sqlite:///file:{study_path.resolve()}?mode=ro&uri=true"
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # for this load only: the caller's setting stays
    try:
        names = optuna.get_all_study_names(storage)
        if study_name not in names and len(names) == 1:  # a folder from before started_with.study_name
            study_name = names[0]
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise NoData(f"{STUDY_FILE} holds no study named '{study_name}' (it holds {', '.join(names) or 'none'})") \
            from None
    finally:
        optuna.logging.set_verbosity(level)
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


@styled
def plot_param_importance(run: SweepRun) -> Figure:
    """f. Hyperparameter importance for the study's objective, from the Optuna study in study.db."""
    imp = param_importances(run.run_dir / STUDY_FILE, run.study_name)
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
