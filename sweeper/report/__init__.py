"""Reports drawn from saved results only (never by re-training): a run folder's page, summary and figures, and the
figures `sweeper evaluate` draws. Nothing below the report imports it.

Offers: `write_report` (here), `evaluation.draw_evaluation` (passed to `sweeper.evaluate.evaluate_run` by the CLI).

`write_report(RUN_DIR)` turns a run folder into `RUN_DIR/report/`:

    index.html   one self-contained page: headline, figures (embedded PNG), sortable trials table
    summary.md   the headline and the top-10 trials
    *.png        the figures, also embedded in index.html

A run folder is a sweep (`python -m sweeper search`: sweep.json, trials.csv, ...) or a baseline run
(`python -m sweeper baseline`: config.json, metrics.jsonl, ...). The package, one concern a module:

    load.py           reading a run folder (SweepRun, BaselineRun), through sweeper.rundir.layout and sweeper.files
    figures.py        the house style and the helpers every figure is drawn with
    sweep_figures.py  the sweep report's figures (add one: a plot_* function and its FigureSpec there)
    run_figures.py    phase 1's training curves, a baseline run's figures, the figures `evaluation.py` draws
    evaluation.py     `sweeper evaluate`'s colour masks and figures, from what it scored
    bench_figures.py  figures of scripts/bench/'s results files (search_efficiency.json)
    summary.py        words and numbers shared by the page and summary.md; summary.md itself
    page.py           index.html: layout, CSS, the sortable table

Nothing here imports torch or Ray: `sweeper report` runs without them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sweeper.files import ensure_writable_dir, write_text_atomic
from sweeper.report.figures import render_figures
from sweeper.report.load import load_baseline, load_sweep, run_kind
from sweeper.report.page import baseline_html, sweep_html
from sweeper.report.run_figures import BASELINE_FIGURES
from sweeper.report.summary import baseline_summary_md, sweep_summary_md
from sweeper.report.sweep_figures import SWEEP_FIGURES
from sweeper.rundir.layout import REPORT_DIR

log = logging.getLogger(__name__)


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/ (index.html, summary.md, figures) from saved results; return index.html's path.

    The run folder is read and checked before report/ is created, so a damaged one leaves no half report."""
    run_dir = Path(run_dir)
    if run_kind(run_dir) == "baseline":
        baseline = load_baseline(run_dir)
        out = ensure_writable_dir(run_dir / REPORT_DIR)
        figures = render_figures(BASELINE_FIGURES, baseline, out)
        write_text_atomic(out / "summary.md", baseline_summary_md(baseline))
        write_text_atomic(out / "index.html", baseline_html(baseline, figures))
    else:
        run = load_sweep(run_dir)
        out = ensure_writable_dir(run_dir / REPORT_DIR)
        figures = render_figures(SWEEP_FIGURES, run, out)
        write_text_atomic(out / "summary.md", sweep_summary_md(run))
        write_text_atomic(out / "index.html", sweep_html(run, figures))
    log.debug("report written to %s", out / "index.html")
    return out / "index.html"
