"""Reports from saved results: hand-written run folders (no Ray, no training), checked value by value."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import optuna
import pandas as pd
import pytest
from conftest import ROOT

from sweeper.errors import SweeperError
from sweeper.report import write_report
from sweeper.report.figures import PHASE1_VAL_IOU, NoData, reference_lines, render_figures
from sweeper.report.load import load_baseline, load_sweep
from sweeper.report.page import sweep_html, trials_table_html
from sweeper.report.run_figures import BASELINE_FIGURES, phase1_figure, phase1_plots, plot_baseline_val_iou
from sweeper.report.summary import SYNTHETIC_BANNER, sweep_summary_md
from sweeper.report.sweep_figures import (SWEEP_FIGURES, VERDICT_COLORS, class_iou_table, param_importances,
                                          plot_asha_budget, plot_lr_vs_iou, plot_param_importance, plot_ranked_trials,
                                          plot_val_iou_curves)
from sweeper.training.config import PUBLISHED_BASELINE_IOU

CLASSES = ("Trees", "Rocks", "Sky")
# trial: (optimizer, lr, class_weights, status, planned, per-epoch val IoU, error)
TRIALS = {
    0: ("sgd", 1e-4, "none", "TERMINATED", 4, [0.10, 0.15, 0.18, 0.20], None),  # the baseline trial
    1: ("adamw", 1e-3, "inverse", "TERMINATED", 4, [0.20, 0.30, 0.35, 0.33], None),
    2: ("adam", 3e-3, "log", "TERMINATED", 4, [0.12, 0.15], None),  # stopped by ASHA after 2 of 4
    3: ("sgd", 1e-2, "none", "ERROR", 4, [], "TrainingDiverged: training loss became nan at epoch 1"),
    4: ("adamw", 5e-4, "sqrt_inverse", "TERMINATED", 4, [0.18, 0.22, 0.24, 0.25], None),
}
BASELINE_BEST, BEST = 0.20, 0.35


def class_ious(trial: int, epoch: int) -> dict[str, float]:
    """Per-class IoU that differ by trial and epoch, so picking the wrong row shows."""
    return {f"val_class_iou/{c}": round(0.1 * (k + 1) + 0.01 * trial + 0.001 * epoch, 4)
            for k, c in enumerate(CLASSES)}


def write_study(path: Path, name: str, n: int) -> None:
    """An Optuna study with `n` completed trials over three params (lr drives the value)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{path}", direction="maximize")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
             "optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adam", "adamw"]),
             "batch_size": optuna.distributions.CategoricalDistribution([2, 4, 8]),
             "momentum": optuna.distributions.FloatDistribution(0.8, 0.99)}
    for i in range(n):
        lr = 1e-5 * 10 ** (3 * i / max(1, n - 1))
        params = {"lr": lr, "optimizer": ["sgd", "adam", "adamw"][i % 3], "batch_size": [2, 4, 8][i % 3]}
        if params["optimizer"] == "sgd":  # conditional, as in the real space
            params["momentum"] = 0.9
        study.add_trial(optuna.trial.create_trial(params=params, value=0.1 + lr * 20,
                                                  distributions={k: dists[k] for k in params}))


def make_sweep(root: Path, *, synthetic: bool = True, planned: int | None = None, finished: bool = True,
               tables: bool = True, study_trials: int = 8, trials: dict = TRIALS) -> Path:
    """A sweep folder as `python -m sweeper search` leaves it, written by hand."""
    run = root / "fake-sweep"
    run.mkdir(parents=True)
    info = {"command": "search", "options": {"name": "fake-sweep", "trials": planned or len(trials)},
            "space": {"metric": "val_iou", "mode": "max"},
            "backbone": {"name": "random_vits14" if synthetic else "dinov2_vits14", "trained": not synthetic,
                         "description": "test backbone"},
            "data": {"synthetic": synthetic, "root": "/data", "train_images": 4, "val_images": 2,
                     "class_names": list(CLASSES)}}
    if finished:
        info["wall_seconds"] = 12.0
    (run / "sweep.json").write_text(json.dumps(info))
    rows, hist = [], []
    for t, (opt, lr, cw, status, planned_ep, ious, err) in trials.items():
        best = max(ious) if ious else None
        rows.append({"trial": t, "trial_id": f"id{t}", "status": status, "baseline": t == 0, "lr": lr,
                     "optimizer": opt, "class_weights": cw, "batch_size": 2, "schedule": "constant",
                     "epochs": planned_ep, "epochs_planned": planned_ep, "epochs_run": len(ious),
                     "stopped_early": status == "TERMINATED" and len(ious) < planned_ep,
                     "best_val_iou": best, "best_epoch": ious.index(best) + 1 if ious else None,
                     "last_val_iou": ious[-1] if ious else None,
                     "best_val_miou": best - 0.05 if ious else None, "error": err})
        for e, v in enumerate(ious, 1):
            hist.append({"trial": t, "trial_id": f"id{t}", "baseline": t == 0, "optimizer": opt, "epoch": e,
                         "val_iou": v, "val_miou": v - 0.05, **class_ious(t, e)})
    if tables:
        pd.DataFrame(rows).to_csv(run / "trials.csv", index=False)
        pd.DataFrame(hist).to_csv(run / "history.csv", index=False)
    if study_trials:
        write_study(run / "study.db", "fake-sweep", study_trials)
    return run


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory) -> tuple[Path, str]:
    """One full report of the synthetic fake sweep, shared by the tests that read it."""
    run = make_sweep(tmp_path_factory.mktemp("sweep"))
    before = mtimes(run)
    page = write_report(run)
    assert mtimes(run, skip="report") == before  # reads the run, writes only under report/
    return run, page.read_text()


def mtimes(folder: Path, skip: str = "") -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if skip not in p.relative_to(folder).parts}


def tbody_rows(page: str) -> list[str]:
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S).group(1)
    return re.findall(r"<tr\b[^>]*>", body)


def test_page_embeds_every_figure_as_png_and_needs_no_network(sweep_report):
    run, page = sweep_report
    assert page == (run / "report" / "index.html").read_text()
    for spec in SWEEP_FIGURES:
        assert (run / "report" / spec.file).is_file()
        m = re.search(rf'<figure id="{Path(spec.file).stem}">.*?src="data:image/png;base64,([^"]+)"', page, re.S)
        assert m, spec.file
        assert base64.b64decode(m.group(1)) == (run / "report" / spec.file).read_bytes()
    assert page.count("data:image/png;base64,") == len(SWEEP_FIGURES)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # self-contained


def test_table_has_one_sortable_row_per_trial(sweep_report):
    _, page = sweep_report
    rows = tbody_rows(page)
    assert len(rows) == len(TRIALS)
    assert sorted(int(re.search(r'data-trial="(\d+)"', r).group(1)) for r in rows) == sorted(TRIALS)
    assert '<tr class="best" data-trial="1">' in rows[0]  # best first
    assert "<script>" in page and 'addEventListener("click"' in page and 'data-v="0.35"' in page


def test_headline_compares_best_with_baseline_trial_and_published(sweep_report):
    _, page = sweep_report
    headline = re.search(r'<section id="headline">(.*?)</section>', page, re.S).group(1)
    assert "trial 1: adamw, lr 1.0e-03" in headline and "val IoU 0.3500 at epoch 3" in headline
    assert "IoU +0.1500 (+75.0%)" in headline  # vs the baseline trial's 0.20
    assert f"IoU {BEST - PUBLISHED_BASELINE_IOU:+.4f} ({(BEST - PUBLISHED_BASELINE_IOU) / PUBLISHED_BASELINE_IOU:+.1%})" \
        in headline
    assert "mIoU +0.1500 (+100.0%)" in headline  # both metrics: 0.30 vs 0.15
    assert "published phase-1 figure on the real data (0.2971)" in headline


def test_failed_trial_is_listed_with_its_error(sweep_report):
    _, page = sweep_report
    failed = re.search(r'<section id="failed".*?</section>', page, re.S).group(0)
    assert "trial 3" in failed and "TrainingDiverged: training loss became nan at epoch 1" in failed


@pytest.mark.parametrize("synthetic", [True, False])
def test_synthetic_banner_iff_synthetic(tmp_path, synthetic):
    run = load_sweep(make_sweep(tmp_path, synthetic=synthetic, study_trials=0))
    page, summary = sweep_html(run, figures=[]), sweep_summary_md(run)
    assert (SYNTHETIC_BANNER in page) is synthetic
    assert (SYNTHETIC_BANNER in summary) is synthetic
    assert ('id="banner"' in page) is synthetic  # real data with a trained backbone: no warning at all
    assert ("not comparable" in page) is synthetic


def test_reference_lines_are_published_figure_and_baseline_trial(sweep_report):
    run = load_sweep(sweep_report[0])
    for plot in (plot_ranked_trials, plot_lr_vs_iou):
        fig = plot(run)
        refs = reference_lines(fig.axes[0])
        plt.close(fig)
        assert set(refs["published"]) == {PUBLISHED_BASELINE_IOU}, plot.__name__
        assert set(refs["baseline"]) == {BASELINE_BEST}, plot.__name__
    fig = plot_val_iou_curves(run)
    refs = reference_lines(fig.axes[0])
    plt.close(fig)
    assert refs["published"] == list(PHASE1_VAL_IOU)
    assert refs["baseline"] == TRIALS[0][5]  # the baseline trial's own curve
    assert PHASE1_VAL_IOU[-1] == PUBLISHED_BASELINE_IOU


def test_ranked_bars_are_in_score_order_and_marked(sweep_report):
    run = load_sweep(sweep_report[0])
    fig = plot_ranked_trials(run)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches[:len(TRIALS)]]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    assert labels == ["1", "4", "0", "2", "3"] and heights == [0.35, 0.25, 0.20, 0.15, 0.0]
    # synthetic data: only the sweep's own baseline trial counts
    assert {"beats the baseline trial", "does not beat the baseline trial", "baseline trial",
            "no score (failed)", "stopped early by ASHA"} <= set(legend)


def test_on_real_data_bars_are_judged_against_both_references(tmp_path):
    run = load_sweep(make_sweep(tmp_path, synthetic=False, study_trials=0))
    fig = plot_ranked_trials(run)
    ax = fig.axes[0]
    colours = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches[:len(TRIALS)]]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    c = VERDICT_COLORS
    # ranked 1 (0.35), 4 (0.25), 0 (baseline 0.20), 2 (0.15), 3 (failed)
    assert colours == [c["all"], c["some"], c["baseline"], c["none"], c["failed"]]
    assert {"beats the baseline trial and 0.2971", "beats the baseline trial only",
            "does not beat the baseline trial or 0.2971"} <= set(legend)


def test_class_iou_delta_uses_each_trials_best_epoch(sweep_report):
    table = class_iou_table(load_sweep(sweep_report[0]))
    assert table.index[0].startswith("baseline trial 0, epoch 4")
    assert [i.split(",")[0] for i in table.index] == ["baseline trial 0", "trial 1", "trial 4", "trial 2"]
    assert table.iloc[0].tolist() == list(class_ious(0, 4).values())
    assert table.iloc[1].tolist() == list(class_ious(1, 3).values())  # trial 1 peaked at epoch 3


def test_asha_budget_counts_saved_epochs(sweep_report):
    fig = plot_asha_budget(load_sweep(sweep_report[0]))
    title = fig.axes[0].get_title()
    plt.close(fig)
    assert "saved 2 of 20 planned epochs (10%)" in title  # trial 2 stopped at 2 of 4; failed trial 3 not counted


def test_summary_md_top_table(sweep_report):
    run, _ = sweep_report
    md = (run / "report" / "summary.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| rank")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in table]
    assert [c[1] for c in cells] == ["trial 1", "trial 4", "trial 0 (baseline)", "trial 2"]  # failed: no score
    assert cells[0][5:] == ["0.3500", "0.3000", "+0.1500", f"{BEST - PUBLISHED_BASELINE_IOU:+.4f}"]
    assert cells[2][7] == "+0.0000"
    assert "**Best trial**: trial 1: adamw" in md and "## Failed trials" in md


def test_summary_md_shows_at_most_ten(tmp_path):
    many = {i: ("adam", 1e-3 * (i + 1), "none", "TERMINATED", 2, [0.1 + 0.01 * i, 0.1 + 0.02 * i], None)
            for i in range(12)}
    run = load_sweep(make_sweep(tmp_path, trials=many, study_trials=0))
    md = sweep_summary_md(run)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| rank")]
    assert len(rows) == 10 and rows[0].startswith("| 1 | trial 11 ")
    assert len(tbody_rows(trials_table_html(run))) == 12


def test_too_few_study_trials_draws_a_figure_that_says_so(tmp_path, caplog):
    import logging

    import numpy as np
    from PIL import Image

    run = load_sweep(make_sweep(tmp_path, study_trials=2))
    with pytest.raises(NoData, match="too few completed trials"):
        plot_param_importance(run)
    (tmp_path / "out").mkdir()
    spec = next(s for s in SWEEP_FIGURES if s.file == "param_importance.png")
    with caplog.at_level(logging.INFO, logger="sweeper.report"):
        [(_, png)] = render_figures([spec], run, tmp_path / "out")
    assert any("param_importance.png: too few completed trials" in r.getMessage() for r in caplog.records)
    with Image.open(png) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("L"))
    assert pixels.min() < 128 < pixels.max()  # dark text on a light page, not an empty image


def test_importance_ranks_the_param_that_drives_the_objective(tmp_path):
    imp = param_importances(make_sweep(tmp_path) / "study.db", "fake-sweep")
    assert imp.trials == 8 and set(imp.values) == {"lr", "optimizer", "batch_size"}
    assert imp.conditional == ("momentum",)  # sgd-only: not ranked against params every trial has
    assert max(imp.values, key=imp.values.get) == "lr"
    assert sum(imp.values.values()) == pytest.approx(1.0)
    again = param_importances(make_sweep(tmp_path / "again") / "study.db", "fake-sweep")
    assert again.values == imp.values  # deterministic: the figure is stable


@pytest.mark.parametrize("recorded", [True, False])
def test_a_sweep_resumed_under_another_name_keeps_its_importance_figure(tmp_path, recorded):
    """A sweep copied to folder NEW and resumed with `--resume --name NEW`: sweep.json then says NEW, but the
    study keeps the name it was created with, which sweep.json's started_with records (or, for a folder from
    before that record, the one study the database holds)."""
    run = make_sweep(tmp_path)
    info = json.loads((run / "sweep.json").read_text())
    info["options"]["name"] = "NEW"
    if recorded:
        info["started_with"] = {"study_name": "fake-sweep"}
    (run / "sweep.json").write_text(json.dumps(info))
    fig = plot_param_importance(load_sweep(run))  # NoData ("holds no study named 'NEW'") before
    assert "8 completed trials" in fig.axes[0].get_title()
    plt.close(fig)


def test_half_written_run_reports_what_is_missing(tmp_path):
    # killed sweep: no trials.csv/history.csv, a ray/ folder that cannot be read, 8 trials planned
    run = make_sweep(tmp_path, planned=8, finished=False, tables=False, study_trials=0)
    (run / "ray").mkdir()
    page = write_report(run).read_text()
    missing = re.search(r'<section id="missing".*?</section>', page, re.S).group(0)
    assert "did not finish" in missing  # sweep.json without wall_seconds
    assert "trials.csv: missing, and ray/ could not be read" in missing
    assert "study.db: missing" in missing
    assert "No trials yet." in page and page.count("data:image/png;base64,") == len(SWEEP_FIGURES)


def test_fewer_trials_than_planned_and_unfinished_trials_are_listed(tmp_path):
    partial = {**TRIALS, 4: ("adamw", 5e-4, "sqrt_inverse", "RUNNING", 4, [0.18, 0.22], None)}
    run = make_sweep(tmp_path, planned=8, finished=False, trials=partial, study_trials=0)
    sweep = load_sweep(run)
    assert "3 of 8 planned trials have no results (never started)" in sweep.missing
    assert any("did not finish (RUNNING): trial 4" in m for m in sweep.missing)
    md = sweep_summary_md(sweep)
    assert "## Missing or unfinished" in md and "3 of 8 planned trials" in md


def test_missing_baseline_trial_is_reported(tmp_path):
    no_base = {k: v for k, v in TRIALS.items() if k != 0}
    run = make_sweep(tmp_path, trials=no_base, study_trials=0)
    sweep = load_sweep(run)
    assert any(m.startswith("no baseline trial") for m in sweep.missing)
    with pytest.raises(NoData):
        class_iou_table(sweep)
    fig = plot_ranked_trials(sweep)
    refs = reference_lines(fig.axes[0])
    plt.close(fig)
    assert refs == {"published": [PUBLISHED_BASELINE_IOU, PUBLISHED_BASELINE_IOU]}


@pytest.mark.parametrize("content", [None, "notes.txt", "config.yaml"])
def test_non_run_folder_raises_one_line_error(tmp_path, content):
    if content:
        (tmp_path / content).write_text("x")
    with pytest.raises(SweeperError, match="not a run folder") as e:
        write_report(tmp_path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "report").exists()


def test_missing_folder_raises(tmp_path):
    with pytest.raises(SweeperError, match="no such folder"):
        write_report(tmp_path / "nope")


def test_unreadable_trials_csv_raises_one_line_error(tmp_path):
    run = make_sweep(tmp_path, study_trials=0)
    (run / "trials.csv").write_text("trial,status\n0,TERMINATED\n")  # no best_val_iou column
    with pytest.raises(SweeperError, match="best_val_iou"):
        write_report(run)
    assert not (run / "report").exists()


@pytest.mark.parametrize("kind", ["sweep", "baseline"])
def test_report_command_imports_neither_torch_nor_ray(tmp_path, kind):
    """`sweeper report` reads saved results only, so it runs where torch and Ray are not loaded (or installed)."""
    run = make_sweep(tmp_path) if kind == "sweep" else make_baseline(tmp_path, synthetic=True)
    code = ("import sys; from sweeper.cli.main import main; assert main(['report', sys.argv[1]]) == 0; "
            "print('heavy modules:', sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "heavy modules: []" in out.stdout.splitlines()
    assert (run / "report" / "index.html").is_file()


# --------------------------------------------------------------------------- baseline run folders


def make_baseline(root: Path, *, synthetic: bool, epochs: int = 3, planned: int = 3) -> Path:
    """A `python -m sweeper baseline` folder, written by hand."""
    run = root / "baseline-x"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({
        "command": "baseline", "config": {"optimizer": "sgd", "lr": 1e-4, "epochs": planned},
        "backbone": {"name": "random_vits14", "trained": not synthetic, "description": "test"},
        "data": {"synthetic": synthetic, "root": "/data", "train_images": 4, "val_images": 2}}))
    with open(run / "metrics.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            f.write(json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_iou": 0.1 * e,
                                "val_iou": [0.21, 0.28, 0.26][e - 1], "train_dice": 0.2, "val_dice": 0.2,
                                "train_acc": 0.5, "val_acc": 0.5, "val_miou": 0.2}) + "\n")
    return run


@pytest.mark.parametrize("synthetic", [True, False])
def test_baseline_run_report(tmp_path, synthetic):
    run = make_baseline(tmp_path, synthetic=synthetic)
    page = write_report(run).read_text()
    headline = re.search(r'<section id="headline">(.*?)</section>', page, re.S).group(1)
    assert "0.2800 at epoch 2" in headline
    assert f"{0.28 - PUBLISHED_BASELINE_IOU:+.4f} ({(0.28 - PUBLISHED_BASELINE_IOU) / PUBLISHED_BASELINE_IOU:+.1%})" \
        in headline
    assert (SYNTHETIC_BANNER in page) is synthetic
    assert page.count("data:image/png;base64,") == len(BASELINE_FIGURES)
    assert (run / "report" / "summary.md").read_text().startswith("# Baseline run report")
    assert not (run / "iou_curves.png").exists()  # the report writes only under report/

    fig = plot_baseline_val_iou(load_baseline(run))
    refs = reference_lines(fig.axes[0])
    plt.close(fig)
    assert refs == {"baseline": [0.21, 0.28, 0.26], "published": list(PHASE1_VAL_IOU)}


def test_unfinished_baseline_run_reports_missing_epochs(tmp_path):
    run = make_baseline(tmp_path, synthetic=True, epochs=2, planned=10)
    page = write_report(run).read_text()
    assert "only 2 of 10 epochs finished" in page


def test_confirm_summary_appears_in_page_and_markdown(tmp_path):
    from sweeper.search.confirm import summarise_confirm

    run = make_sweep(tmp_path / "run")
    runs = pd.DataFrame({"trial": [0, 0, 0, 3, 3, 3], "best_val_iou": [0.20, 0.21, 0.19, 0.30, 0.31, 0.29]})
    summarise_confirm(runs, baseline_trial=0).to_csv(run / "confirm_summary.csv", index=False)
    page = write_report(run).read_text()
    assert 'id="confirm"' in page and "real: gain &gt; 2x seed spread" in page and "+0.1000" in page
    md = (run / "report" / "summary.md").read_text()
    assert "Is the winner real?" in md and "| 0 (phase 1) | sgd, lr 1.0e-04, class weights none | 3 | 0.2000 |" in md


# --------------------------------------------------------------------------- phase 1's four training figures

# Two epochs with a different value for every series, so a panel drawing the wrong one shows.
TWO_EPOCHS = [
    {"epoch": 1, "train_loss": 1.25, "val_loss": 1.5, "train_iou": 0.2, "val_iou": 0.25, "train_dice": 0.3,
     "val_dice": 0.35, "train_acc": 0.6, "val_acc": 0.65},
    {"epoch": 2, "train_loss": 0.75, "val_loss": 1.0, "train_iou": 0.4, "val_iou": 0.3, "train_dice": 0.5,
     "val_dice": 0.45, "train_acc": 0.7, "val_acc": 0.62},
]


# The organisers' layout: (grid rows, cols), and per panel in reading order its title and the series it draws.
@pytest.mark.parametrize("name, grid, panels", [
    ("training_curves.png", (1, 2), [("Loss", [[1.25, 0.75], [1.5, 1.0]]),
                                     ("Pixel Accuracy", [[0.6, 0.7], [0.65, 0.62]])]),
    ("iou_curves.png", (1, 2), [("Train IoU vs Epoch", [[0.2, 0.4]]),
                                ("Validation IoU vs Epoch", [[0.25, 0.3]])]),
    ("dice_curves.png", (1, 2), [("Train Dice vs Epoch", [[0.3, 0.5]]),
                                 ("Validation Dice vs Epoch", [[0.35, 0.45]])]),
    ("all_metrics_curves.png", (2, 2), [("Loss vs Epoch", [[1.25, 0.75], [1.5, 1.0]]),
                                        ("IoU vs Epoch", [[0.2, 0.4], [0.25, 0.3]]),
                                        ("Dice Score vs Epoch", [[0.3, 0.5], [0.35, 0.45]]),
                                        ("Pixel Accuracy vs Epoch", [[0.6, 0.7], [0.65, 0.62]])]),
])
def test_phase1_figures_have_the_organisers_panels(name, grid, panels):
    fig = phase1_figure(TWO_EPOCHS, name)
    try:
        axes = fig.axes
        assert [ax.get_title() for ax in axes] == [title for title, _ in panels]
        # reading order on the grid: left to right, then top to bottom
        cells = [(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in axes]
        assert cells == [(r, c) for r in range(grid[0]) for c in range(grid[1])]
        assert all(ax.get_subplotspec().get_gridspec().get_geometry() == grid for ax in axes)
        for ax, (_, series) in zip(axes, panels):
            assert [list(line.get_ydata()) for line in ax.get_lines()] == series
            assert all(list(line.get_xdata()) == [1, 2] for line in ax.get_lines())
            assert ax.get_xlabel() == "Epoch"
    finally:
        plt.close(fig)


def test_phase1_plots_writes_the_four_figures(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in TWO_EPOCHS)
    paths = phase1_plots(tmp_path)
    assert [p.name for p in paths] == ["training_curves.png", "iou_curves.png", "dice_curves.png",
                                       "all_metrics_curves.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_phase1_figure_unknown_name_is_a_one_line_error():
    with pytest.raises(SweeperError, match="loss_curves.png.*training_curves.png"):
        phase1_figure(TWO_EPOCHS, "loss_curves.png")


def trial_records(run: Path, ious: dict[int, list[float]]) -> None:
    """Each trial's own records under ray/ (config, epochs, end), as a finished sweep leaves them."""
    from sweeper import files
    from sweeper.rundir import layout, records

    (run / "space.yaml").write_text((ROOT / "sweeper" / "search_spaces"
                                     / "smoke.yaml").read_text())
    for t, values in ious.items():
        folder = run / "ray" / f"trial_{t}"
        records.write_trial_start(folder, {"trial_number": t, "lr": 1e-3 * (t + 1), "epochs": len(values)},
                                  trial_id=f"id{t}")
        for e, v in enumerate(values, 1):
            files.append_jsonl(folder / layout.TRIAL_EPOCHS, {"epoch": e, "val_iou": v, "val_miou": v - 0.05})
        records.write_trial_end(folder, "TERMINATED")


@pytest.mark.parametrize("gone, expected", [
    (["trials.csv"], "trials.csv: missing (history.csv is there); this report rebuilt the trials from ray/"),
    (["trials.csv", "history.csv"], "trials.csv and history.csv: missing; this report rebuilt them from ray/"),
])
def test_a_finished_sweep_without_its_tables_names_what_is_missing(tmp_path, gone, expected):
    run = make_sweep(tmp_path, study_trials=0)
    trial_records(run, {0: [0.1, 0.2], 1: [0.3, 0.25]})
    for name in gone:
        (run / name).unlink()
    sweep = load_sweep(run)
    table_lines = [m for m in sweep.missing if "trials.csv" in m or "history.csv" in m]
    assert table_lines == [expected]
    assert not any("did not finish" in m for m in sweep.missing)  # sweep.json records its end
    assert list(sweep.trials.best_val_iou) == [0.2, 0.3]


def test_an_unfinished_sweep_without_tables_says_they_were_not_written(tmp_path):
    run = make_sweep(tmp_path, finished=False, tables=False, study_trials=0)
    trial_records(run, {0: [0.1, 0.2]})
    assert "trials.csv and history.csv: not written (the sweep did not finish); this report rebuilt them from ray/" \
        in load_sweep(run).missing
