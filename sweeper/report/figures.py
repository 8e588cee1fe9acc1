"""The look of every figure, defined once, and the helpers every figure is drawn with.

A figure function is decorated with `@styled`, which draws it under the house style (seaborn's whitegrid
and notebook settings in a `matplotlib.rc_context`); it gets its axes from `new_figure` and is written by
`save_figure`. Lines that compare with a reference (the published phase-1 curve, the sweep's own baseline
trial) go through `reference_line` / `reference_curve`. Figures are `matplotlib.figure.Figure` objects on an
Agg canvas, never pyplot's: no backend is chosen and no process-wide setting changes, so a program that
imports this keeps its own matplotlib state.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ParamSpec, Sequence, TypeVar

import matplotlib
import pandas as pd
import seaborn as sns
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from sweeper.files import write_atomic
from sweeper.report.summary import PUBLISHED_LABEL
from sweeper.training.config import PUBLISHED_BASELINE_IOU

log = logging.getLogger(__name__)

# Phase 1's val IoU per epoch on the real data (phase-1 report, section 5); ends at PUBLISHED_BASELINE_IOU.
PHASE1_VAL_IOU: tuple[float, ...] = (0.2211, 0.2513, 0.2636, 0.2733, 0.2758, 0.2851, 0.2874, 0.2924, 0.2934, 0.2971)
assert PHASE1_VAL_IOU[-1] == PUBLISHED_BASELINE_IOU

DPI = 110  # PNG resolution of every figure
# One look for the two references everywhere; `gid` lets tests find the lines on the axes.
REFERENCE_STYLE: dict[str, dict[str, Any]] = {
    "published": {"color": "0.15", "linestyle": "--", "linewidth": 1.5},
    "baseline": {"color": "#8172b3", "linestyle": "-.", "linewidth": 2.0},
}
OPTIMIZER_COLORS = {"sgd": "#4c72b0", "adam": "#dd8452", "adamw": "#55a868"}  # the same in every figure


class NoData(Exception):
    """A figure cannot be drawn from what the run folder holds; the message says what is missing."""


# --------------------------------------------------------------------------- style, figure, file

P = ParamSpec("P")
R = TypeVar("R")


def house_style() -> contextlib.AbstractContextManager[None]:
    """The house style as a scoped rc_context: seaborn's whitegrid and notebook looks, its 'deep' colours."""
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"), "font.family": ["sans-serif"],
          "axes.prop_cycle": cycler(color=sns.color_palette("deep"))}
    return matplotlib.rc_context(rc)


def styled(draw: Callable[P, R]) -> Callable[P, R]:
    """Draw a figure under `house_style`: matplotlib reads the style as artists are made, so the whole
    drawing function runs inside it (and nothing outside it is touched)."""

    @functools.wraps(draw)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> R:
        with house_style():
            return draw(*args, **kwargs)

    return drawn


def new_figure(panels: int = 1, *, width: float = 7.0, height: float = 4.5) -> tuple[Figure, list[Axes]]:
    """A figure with `panels` axes (a 2-column grid for more than one); call it inside a `@styled` function."""
    cols = 1 if panels == 1 else 2
    rows = (panels + cols - 1) // cols
    fig = Figure(figsize=(width * cols, height * rows))
    FigureCanvasAgg(fig)  # PNG output without choosing a pyplot backend
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, list(axes.flat)


def save_figure(fig: Figure, path: Path, *, dpi: float = DPI) -> Path:
    """Lay out and write a figure as PNG (atomically: a reader never sees half a file)."""
    with house_style():  # layout and savefig read the style too
        fig.tight_layout()
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path


def plain_style() -> contextlib.AbstractContextManager[None]:
    """matplotlib's own default style, scoped: what the organisers' scripts drew with."""
    return matplotlib.rc_context(matplotlib.rcParamsDefault)


def plain_figure(width: float, height: float, panels: int = 1, *, columns: int = 0) -> tuple[Figure, list[Axes]]:
    """A figure in matplotlib's own default style, `panels` axes in a row (or `columns` to a row): the
    organisers' figures are drawn so."""
    cols = columns or panels
    with plain_style():
        fig = Figure(figsize=(width, height))
        FigureCanvasAgg(fig)
        return fig, list(fig.subplots((panels + cols - 1) // cols, cols, squeeze=False).flat)


def save_plain(fig: Figure, path: Path, *, dpi: float, tight_box: bool = True) -> Path:
    """Write a `plain_figure` as the organisers' scripts do: tight layout, at `dpi`; their test script also
    crops to a tight bounding box, their train script does not (its PNGs are exactly figsize x dpi)."""
    with plain_style():
        fig.tight_layout()
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi,
                                                 **({"bbox_inches": "tight"} if tight_box else {})))
    return path


# --------------------------------------------------------------------------- references, legends, messages


def reference_line(ax: Axes, value: float, *, kind: str, label: str) -> Line2D:
    """A horizontal reference line ('published' or 'baseline' style) with its value in the label."""
    line = ax.axhline(value, label=label, zorder=4, **REFERENCE_STYLE[kind])
    line.set_gid(f"reference:{kind}")
    return line


def reference_curve(ax: Axes, epochs: Sequence[float], values: Sequence[float], *, kind: str,
                    label: str) -> Line2D:
    """A per-epoch reference curve ('published' or 'baseline' style), drawn above the trials."""
    (line,) = ax.plot(list(epochs), list(values), marker="s", markersize=4, label=label, zorder=5,
                      **REFERENCE_STYLE[kind])
    line.set_gid(f"reference:{kind}")
    return line


def reference_lines(ax: Axes) -> dict[str, list[float]]:
    """The y-values of the reference lines drawn on `ax`, by kind (what a reader of the figure compares to)."""
    out: dict[str, list[float]] = {}
    for line in ax.get_lines():
        gid = line.get_gid() or ""
        if gid.startswith("reference:"):
            out.setdefault(gid.split(":", 1)[1], []).extend(float(y) for y in line.get_ydata())
    return out


def outside_legend(ax: Axes, **kw: Any) -> None:
    """Legend to the right of the axes, so it never covers data (tight_layout makes room)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0, **kw)


@styled
def message_figure(title: str, message: str) -> Figure:
    """A figure that says why the real one cannot be drawn (missing or too little data)."""
    fig, (ax,) = new_figure(width=8.0, height=2.6)
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize="medium", transform=ax.transAxes)
    return fig


def optimizer_palette(values: Sequence[Any]) -> dict[str, Any]:
    """Optimiser colours: fixed for the known ones, then seaborn 'deep' colours that no reference uses."""
    deep = sns.color_palette("deep", 10)
    extra = iter(deep[i] for i in (3, 5, 6, 8, 9))  # 0-2 are sgd/adam/adamw, 4 the baseline's purple, 7 grey
    return {v: OPTIMIZER_COLORS.get(str(v)) or next(extra) for v in sorted(set(map(str, values)))}


def val_iou_curves_axes(ax: Axes, history: pd.DataFrame, *, baseline_trial: int | None, baseline_label: str,
                        stopped: Sequence[int] = ()) -> None:
    """Val IoU per epoch: one line per non-baseline trial coloured by optimiser, the baseline trial
    and the published phase-1 curve as reference curves, an x where ASHA stopped a trial.

    Shared by the sweep's curves figure and a baseline run's comparison with phase 1."""
    others = history[history.trial != baseline_trial] if baseline_trial is not None else history
    others = others[others.val_iou.notna()]
    if len(others):
        pal = optimizer_palette(others.optimizer)
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


# --------------------------------------------------------------------------- a report's list of figures


@dataclass(frozen=True)
class FigureSpec:
    """One figure of a report: its file, heading, what it shows, and the function that draws it."""

    file: str  # PNG name inside report/
    heading: str  # heading on the page (also the title of a 'cannot draw' figure)
    caption: str  # what the reader sees, one or two sentences
    draw: Callable[[Any], Figure] = field(repr=False)  # source -> figure; raises NoData


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
