"""The sweep's objective (metric and mode) decides every "best": tables, confirm, evaluate/export, report.

Crafted run folders (the trials' own records, no Ray, no training), checked value by value.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT

from sweeper import files
from sweeper.errors import SweeperError
from sweeper.rundir.layout import EXPERIMENT_DIR, SPACE_COPY, STATE_FILE, SWEEP_FILE, TRIAL_EPOCHS, TRIAL_KEY
from sweeper.rundir.records import write_trial_end, write_trial_start
from sweeper.search.space import load_space
from sweeper.search.tables import summary_table, write_tables

SPACE = """
metric: {metric}
mode: {mode}
trials: 3
max_concurrent: {concurrent}
asha: {{max_epochs: 3, grace_period: 1, reduction_factor: 2}}
fixed: {{epochs: 3, train_metrics: false}}
params:
  lr: {{type: loguniform, low: 1.0e-5, high: 1.0e-2}}
"""


def write_space(path: Path, metric: str = "val_iou", mode: str = "max", concurrent: int = 1) -> Path:
    path.write_text(SPACE.format(metric=metric, mode=mode, concurrent=concurrent))
    return path


# trial: (lr, per-epoch val_iou, per-epoch val_miou); trial 0 is the phase-1 point (lr 1e-4)
CRAFTED = {
    0: (1e-4, [0.10, 0.20, 0.15], [0.30, 0.25, 0.28]),
    1: (1e-3, [0.40, 0.35, 0.30], [0.20, 0.12, 0.18]),  # lowest val mIoU (0.12, epoch 2); highest val IoU
    2: (3e-3, [0.25, 0.30, 0.20], [0.22, 0.16, 0.14]),
}


def crafted_sweep(run: Path, metric: str, mode: str, trials=CRAFTED) -> Path:
    """A finished sweep's folder as the trials and driver write it, with a checkpoint per trial whose head
    tensor holds the trial number (so a test sees which trial's head was picked)."""
    run.mkdir(parents=True)
    write_space(run / SPACE_COPY, metric, mode)
    files.write_json(run / SWEEP_FILE, {"backbone": {}, "data": {}, "cache": {},
                                        "space": {"metric": metric, "mode": mode}})
    for n, (lr, ious, mious) in trials.items():
        folder = run / EXPERIMENT_DIR / f"t_{n:05d}_x"
        write_trial_start(folder, {"lr": lr, "epochs": 3, "train_metrics": False, TRIAL_KEY: n}, trial_id=f"id{n}")
        for e, (iou, miou) in enumerate(zip(ious, mious), 1):
            files.append_jsonl(folder / TRIAL_EPOCHS, {"epoch": e, "val_iou": iou, "val_miou": miou})
        write_trial_end(folder, "TERMINATED")
        (folder / "checkpoint_000002").mkdir()
        head = {"w": torch.full((1,), float(n))}
        torch.save({"head": head, "history": [{"epoch": e} for e in range(1, len(ious) + 1)],
                    "best": {"epoch": 1, "head": head}}, folder / "checkpoint_000002" / STATE_FILE)
    return run


@pytest.mark.parametrize("metric, why", [("val_loss", "weighted by each trial's own class weights"),
                                         ("train_iou", "own training labels"), ("val_ious", "expected one of")])
def test_a_metric_that_cannot_rank_trials_is_refused_in_one_line(tmp_path, metric, why):
    with pytest.raises(SweeperError) as e:
        load_space(write_space(tmp_path / "s.yaml", metric, "min"))
    assert str(e.value).startswith(f"{tmp_path / 's.yaml'}: metric: ") and why in str(e.value)
    assert "\n" not in str(e.value)


def test_a_min_objective_ranks_tables_confirm_heads_and_report(tmp_path):
    from sweeper.report.load import load_sweep
    from sweeper.report.summary import sweep_headline, sweep_summary_md
    from sweeper.rundir.heads import load_run_head
    from sweeper.search.confirm import pick_for_confirm

    run = crafted_sweep(tmp_path / "run", "val_miou", "min")
    space = load_space(run / SPACE_COPY)
    table = write_tables(run, space).set_index("trial")
    # the objective's columns, by its mode: the lowest val mIoU and its epoch
    assert table.best_val_miou.tolist() == [0.25, 0.12, 0.14] and table.best_epoch.tolist() == [2, 2, 3]
    assert table.last_val_miou.tolist() == [0.28, 0.18, 0.14]
    assert table.best_val_iou.tolist() == [0.20, 0.40, 0.30]  # phase 1's metric still there, for 0.2971
    assert table.delta_vs_published.tolist() == pytest.approx([0.20 - 0.2971, 0.40 - 0.2971, 0.30 - 0.2971])
    # the terminal's table ranks by it
    assert [line.split()[0] for line in summary_table(table.reset_index(), space).splitlines()[1:]] == ["1", "2", "0"]
    assert pick_for_confirm(table.reset_index(), space, top=1) == [0, 1]
    # evaluate / export's 'best' is the lowest val mIoU's trial
    head = load_run_head(run)
    assert head.trial == 1 and head.state["w"].item() == 1.0
    assert head.selection["by"] == "best_val_miou" and head.selection["best_val_miou"] == 0.12
    report = load_sweep(run)
    assert report.ranked().trial.tolist() == [1, 2, 0]
    assert sweep_headline(report)[0][1].startswith("trial 1:")
    assert "## Top 10 trials by best val mIoU (lowest first)" in sweep_summary_md(report)


def test_a_val_miou_sweep_reads_back_without_a_best_val_iou_ranking(tmp_path):
    # today's main: "trials.csv: no best_val_iou column, so trials cannot be ranked" for any other metric
    from sweeper.report.load import load_sweep
    from sweeper.rundir.heads import load_run_head

    run = crafted_sweep(tmp_path / "run", "val_miou", "max")
    table = write_tables(run, load_space(run / SPACE_COPY))
    assert table.set_index("trial").best_val_miou.tolist() == [0.30, 0.20, 0.22]
    assert load_sweep(run).ranked().trial.tolist() == [0, 2, 1]
    assert load_run_head(run).trial == 0


def test_confirm_gains_follow_the_mode():
    from sweeper.search.confirm import summarise_confirm
    from sweeper.training.objective import Objective

    runs = pd.DataFrame({"trial": [0, 0, 5, 5], "best_val_miou": [0.30, 0.32, 0.10, 0.12]})
    s = summarise_confirm(runs, 0, Objective("val_miou", "min")).set_index("trial")
    assert s.loc[5, "gain_vs_baseline"] == pytest.approx(0.20) and bool(s.loc[5, "gain_exceeds_spread"])
    up = summarise_confirm(runs, 0, Objective("val_miou", "max")).set_index("trial")
    assert up.loc[5, "gain_vs_baseline"] == pytest.approx(-0.20) and not bool(up.loc[5, "gain_exceeds_spread"])


def test_confirm_with_every_baseline_seed_failed_keeps_the_other_rows(caplog):
    # today's main: IndexError at summarise_confirm's .iloc[0]
    from sweeper.search.confirm import summarise_confirm
    from sweeper.training.objective import Objective

    runs = pd.DataFrame({"trial": [0, 0, 5, 5, 7], "status": ["ERROR", "ERROR", "TERMINATED", "TERMINATED",
                                                              "TERMINATED"],
                         "best_val_iou": [math.nan, math.nan, 0.40, 0.42, 0.30],
                         "error": ["RuntimeError: out of memory", "RuntimeError: out of memory", None, None, None]})
    s = summarise_confirm(runs, 0, Objective())
    assert s.trial.tolist() == [5, 7] and s["mean"].tolist() == pytest.approx([0.41, 0.30])
    assert s.gain_vs_baseline.isna().all() and not s.gain_exceeds_spread.any()
    assert not s.baseline.any()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["confirm: every seed of the baseline trial 0 failed (RuntimeError: out of memory): "
                        "no gain can be measured; the other configs' rows are kept"]


@pytest.mark.parametrize("concurrent, liar", [(1, False), (2, True), (4, True)])
def test_tpe_lies_about_running_trials_whenever_trials_run_at_once(tmp_path, concurrent, liar):
    pytest.importorskip("ray")
    from sweeper.search.driver import make_searcher

    space = load_space(write_space(tmp_path / "s.yaml", concurrent=concurrent))
    searcher = make_searcher(space, study_path=tmp_path / "study.db", study_name="s", seed=0,
                             max_concurrent=concurrent)
    sampler = searcher._ot_study.sampler
    assert sampler._constant_liar is liar
    # and it still is the seeded multivariate TPE
    assert sampler._multivariate and sampler._group


def test_trial_keeps_the_head_of_its_best_epoch_by_the_objective():
    from test_train import learnable_data

    from sweeper.search.trial import run_trial
    from sweeper.training.config import TrainConfig
    from sweeper.training.objective import Objective

    data = learnable_data()
    cfg = TrainConfig(optimizer="adamw", lr=0.3, epochs=5, batch_size=4, device="cpu", threads=1,
                      image_height=56, image_width=112)
    reported: list[tuple[dict, dict]] = []
    run_trial(cfg, data, report=lambda m, s: reported.append((m, s)), objective=Objective("val_miou", "min"))
    mious = [m["val_miou"] for m, _ in reported]
    for k, (m, state) in enumerate(reported):
        best_k = int(np.argmin(mious[:k + 1]))
        assert m["best_val_miou"] == mious[best_k] and m["best_epoch"] == best_k + 1
        assert state["best"]["epoch"] == best_k + 1 and state["best"]["val_miou"] == mious[best_k]
    assert len(set(m["best_epoch"] for m, _ in reported)) > 1 or mious[0] == min(mious)


def test_a_phase3_winner_is_described_by_every_dimension_the_sweep_varied(tmp_path):
    # today's main: "adamw, lr 6.8e-03, warmup, class weights inverse, batch 2", as if it were phase 1's head
    from sweeper.report.load import load_sweep
    from sweeper.report.summary import confirm_rows, sweep_headline, sweep_summary_md
    from sweeper.report.sweep_figures import class_iou_table
    from sweeper.search.tables import describe_trial

    run = tmp_path / "p3"
    run.mkdir()
    (run / SPACE_COPY).write_text((ROOT / "search_spaces" / "phase3.yaml").read_text())
    files.write_json(run / SWEEP_FILE, {"backbone": {}, "data": {}, "cache": {}})
    space = load_space(run / SPACE_COPY)
    base = {**space.baseline_point(), **space.fixed}
    winner = {"lr": 6.8e-3, "epochs": 6, "optimizer": "adamw", "weight_decay": 1e-3, "schedule": "warmup",
              "warmup_epochs": 1.0, "class_weights": "inverse", "class_weight_max": 5.0, "batch_size": 2,
              "head": "convnext_up", "train_labels": "nearest", "flip_prob": 0.05, "train_metrics": False}
    for n, (cfg, ious) in enumerate([(base, [0.1, 0.2]), (winner, [0.3, 0.4])]):
        folder = run / EXPERIMENT_DIR / f"t_{n}"
        write_trial_start(folder, {**cfg, TRIAL_KEY: n}, trial_id=f"id{n}")
        for e, v in enumerate(ious, 1):
            files.append_jsonl(folder / TRIAL_EPOCHS, {"epoch": e, "val_iou": v, "val_miou": v,
                                                       "val_class_iou": {"Trees": v}})
        write_trial_end(folder, "TERMINATED")
    table = write_tables(run, space)
    files.write_text_atomic(run / "confirm_summary.csv", pd.DataFrame(
        {"trial": [0, 1], "seeds": [2, 2], "mean": [0.2, 0.4], "std": [0.01, 0.01], "min": [0.19, 0.39],
         "max": [0.21, 0.41], "baseline": [True, False], "gain_vs_baseline": [0.0, 0.2],
         "noise": [0.01, 0.01], "gain_exceeds_spread": [False, True]}).to_csv(index=False))
    words = ("head convnext_up", "nearest labels", "flips p 0.05", "adamw", "lr 6.8e-03", "6 epochs",
             "warmup 1.0 epochs", "class weights inverse", "max weight 5", "batch 2", "wd 1.0e-03")
    text = describe_trial(table.set_index("trial").loc[1], ["head", *space.param_names])
    assert all(w in text for w in words), text
    assert describe_trial(table.set_index("trial").loc[0], ["head", *space.param_names]).startswith(
        "head convnext_phase1, ")
    report = load_sweep(run)
    assert text in sweep_headline(report)[0][1]  # the headline
    assert f"| {text} |" in sweep_summary_md(report).replace("\\_", "_")  # summary.md's top 10
    assert text in summary_table(table, space)  # the terminal's closing table
    assert any(text in label for label in class_iou_table(report).index)  # a figure's labels
    header, rows = confirm_rows(report)  # the confirm rows
    assert "settings" in header and rows[1][header.index("settings")] == text


@pytest.mark.slow
def test_a_val_miou_sweep_keeps_ranks_confirms_exports_and_evaluates_by_val_miou(tmp_path, capsys, monkeypatch):
    # today's main: the sweep runs, then "trials.csv: no best_val_iou column, so trials cannot be ranked", exit 2
    import json

    import optuna

    from sweeper.cli.main import main
    from sweeper.rundir.layout import BEST_KEY

    pytest.importorskip("ray")
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "set"
    assert main(["-q", "synth", str(data), "--train", "2", "--val", "2", "--test", "1"]) == 0
    space = tmp_path / "miou.yaml"
    space.write_text((ROOT / "search_spaces" / "smoke.yaml").read_text()
                     .replace("metric: val_iou", "metric: val_miou"))
    run = tmp_path / "results" / "miou"

    def cli(*argv):
        code = main(["-q", *argv])
        out = capsys.readouterr()
        assert code == 0, out.err
        return out.out

    try:
        cli("search", "--data", str(data), "--space", str(space), "--trials", "3", "--name", "miou",
            "--out", str(tmp_path / "results"), "--max-concurrent", "1")
        trials = pd.read_csv(run / "trials.csv")
        history = pd.read_csv(run / "history.csv")
        assert len(trials) == 3 and "best_val_miou" in trials and "last_val_miou" in trials
        for row in trials.itertuples():  # keeps: each trial's best epoch is its highest val mIoU's
            curve = history[history.trial == row.trial].sort_values("epoch")
            assert row.best_epoch == curve.epoch.iloc[int(np.argmax(curve.val_miou.to_numpy()))]
            assert row.best_val_miou == pytest.approx(curve.val_miou.max(), abs=1e-12)
            (ckpt,) = (run / "ray").glob(f"*_{row.trial_id}_*/checkpoint_*/{STATE_FILE}")
            best = torch.load(ckpt, weights_only=True)[BEST_KEY]
            assert best["epoch"] == row.best_epoch and best["metric"] == "val_miou"
        study = optuna.load_study(study_name="miou", storage=f"sqlite:///{run / 'study.db'}")
        assert study.metric_names == ["best_val_miou"]
        for t in study.get_trials():
            if t.state == optuna.trial.TrialState.COMPLETE:
                assert t.value == pytest.approx(trials.set_index("trial").best_val_miou[t.number], abs=1e-12)
        # ranks
        winner = trials.sort_values(["best_val_miou", "trial"], ascending=[False, True]).iloc[0]
        summary = (run / "report" / "summary.md").read_text()
        assert "## Top 10 trials by best val mIoU" in summary
        assert f"**Best trial**: trial {winner.trial}" in summary.replace(" (baseline)", "")
        # confirms
        cli("confirm", str(run), "--top", "1", "--seeds", "1")
        confirm = pd.read_csv(run / "confirm.csv")
        assert sorted(confirm.trial) == sorted({0, int(trials[~trials.baseline].sort_values(
            "best_val_miou", ascending=False).trial.iloc[0])})
        for r in confirm.itertuples():  # seed 0 repeats the sweep's trial, scored by val mIoU
            assert r.best_val_miou == pytest.approx(trials.set_index("trial").best_val_miou[r.trial], abs=1e-6)
        assert "mean best val mIoU" in (run / "report" / "summary.md").read_text()
        # exports and evaluates the winner by val mIoU, at its best val-mIoU epoch
        cli("export", str(run), "--out", str(tmp_path / "export"))
        exported = json.loads((tmp_path / "export" / "config.json").read_text())
        assert exported["source"]["trial"] == winner.trial
        assert exported["source"]["selection"]["by"] == "best_val_miou"
        assert exported["source"]["selection"]["epoch"] == winner.best_epoch
        cli("evaluate", str(run), "--samples", "0")
        m = json.loads((run / "evaluation" / f"trial-{winner.trial}" / "test_metrics.json").read_text())
        assert m["run"]["trial"] == winner.trial and m["run"]["epoch"] == winner.best_epoch
        assert m["validation"]["val_miou"] == pytest.approx(winner.best_val_miou, abs=1e-9)
    finally:
        import ray
        ray.shutdown()


def test_asha_internals_the_baseline_exemption_relies_on_are_pinned(tmp_path):
    # Ray's own ASHA, the baseline overruled at a rung: fails loudly if Ray renames _num_stopped or keeps its
    # rungs another way (then check_asha_internals refuses to start a sweep, and this says why).
    pytest.importorskip("ray")
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from sweeper.search.driver import check_asha_internals, make_scheduler

    space = load_space(write_space(tmp_path / "s.yaml"))  # max 3 epochs, grace 1, factor 2: rungs at 1 and 2
    sched = make_scheduler(space)
    check_asha_internals(sched)
    assert sched._num_stopped == 0 and len(sched._brackets) == 1
    assert [m for m, _ in sched._brackets[0]._rungs] == [2, 1]
    trials = {name: Trial("t", config={"lr": lr, "epochs": 3}, trial_id=name, stub=True)
              for name, lr in (("a", 1e-3), ("base", 1e-4), ("c", 2e-3))}
    for t in trials.values():
        sched.on_trial_add(None, t)
    step = lambda name, epoch, v: sched.on_trial_result(None, trials[name], {"epoch": epoch, "val_iou": v})  # noqa
    assert step("a", 1, 0.5) == TrialScheduler.CONTINUE
    assert step("base", 1, 0.1) == TrialScheduler.CONTINUE  # ASHA said STOP; the exemption overruled it
    assert sched._num_stopped == 0  # ... and took it back out of the count
    assert sched._brackets[0]._rungs[1][1] == {"a": 0.5, "base": 0.1}  # recorded at the rung all the same
    assert step("c", 1, 0.2) == TrialScheduler.STOP and sched._num_stopped == 1  # 0.2 < median(0.5, 0.1) = 0.3
    assert sched._brackets[0]._rungs[1][1] == {"a": 0.5, "base": 0.1, "c": 0.2}


def test_a_ray_without_the_asha_bookkeeping_is_refused_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from sweeper.search.driver import make_scheduler

    real_init = AsyncHyperBandScheduler.__init__

    def renamed(self, *a, **kw):  # a Ray release that renamed the stop count
        real_init(self, *a, **kw)
        self._stopped = self.__dict__.pop("_num_stopped")

    monkeypatch.setattr(AsyncHyperBandScheduler, "__init__", renamed)
    with pytest.raises(SweeperError, match=r"^ray [\d.]+: AsyncHyperBandScheduler's internals .* ray 2\.60"):
        make_scheduler(load_space(write_space(tmp_path / "s.yaml")))


def test_progress_lines_compare_with_0_2971_only_on_val_iou(tmp_path):
    import io
    from types import SimpleNamespace

    from sweeper.search.progress import ProgressPrinter

    out = io.StringIO()
    printer = ProgressPrinter(load_space(write_space(tmp_path / "s.yaml", "val_miou", "min")), stream=out)
    t = SimpleNamespace(experiment_tag="1_lr=0.001", config={"lr": 1e-3, "epochs": 3}, status="RUNNING",
                        last_result=None, trial_id="t0", path=None, error_msg=None)
    for epoch, v in ((1, 0.30), (2, 0.20), (3, 0.25)):
        printer.on_result([t], t, {"epoch": epoch, "val_miou": v})
    last = out.getvalue().splitlines()[-1].split("] ", 1)[1]
    assert last.startswith("trial   0 epoch 3/3: val_miou 0.2500  | best 0.2000 (trial 0) | ")  # min: the lowest
    assert "0.2971" not in out.getvalue()  # a val IoU figure, never shown beside another metric
