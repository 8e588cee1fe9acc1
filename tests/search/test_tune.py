"""The search: Ray Tune trials of the shared trainer, Optuna TPE, ASHA. Starts one local Ray for the module."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, make_dataset
from test_train import learnable_data

from sweeper.data.cache import load_train_data
from sweeper.files import read_jsonl
from sweeper.model.backbone import create_backbone
from sweeper.search.driver import run_search
from sweeper.search.options import SearchOptions
from sweeper.search.space import load_space
from sweeper.training.config import LabelMode

ray = pytest.importorskip("ray")
SMALL = {"image_height": 56, "image_width": 112}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # One logical GPU on a machine without one: Ray schedules by declared resources, so
    # fractional GPU trials can be tested here; torch in the trials still runs on the CPU.
    import os
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_space(path: Path, *, trials: int, params: str, epochs: int = 2, concurrent: int = 2) -> Path:
    path.write_text(f"""
metric: val_iou
mode: max
trials: {trials}
max_concurrent: {concurrent}
asha: {{max_epochs: {epochs}, grace_period: 1, reduction_factor: 2}}
fixed: {{epochs: {epochs}, train_metrics: false}}
params:
{params}
""")
    return path


def options(tmp_path: Path, name: str, **kw) -> SearchOptions:
    base = dict(name=name, out_root=tmp_path, trials=3, max_concurrent=2, gpus_per_trial=0.0, cpus_per_trial=1.0, seed=0)
    base.update(kw)
    return SearchOptions(**base)


def _result(epoch: int, values: list[float]) -> dict:
    """A trial's flattened Tune result after `epoch` epochs whose val IoUs were `values`."""
    return {"epoch": epoch, "training_iteration": epoch, "val_iou": values[epoch - 1],
            "best_val_iou": max(values[:epoch])}


def test_study_objective_is_the_best_epoch_and_asha_stops_are_pruned(tmp_path):
    # Ray's calls as a sweep makes them: on_trial_result for every epoch except the one where ASHA
    # stops a trial (that result reaches only on_trial_complete), on_trial_complete(error=True) for a crash.
    import optuna

    from sweeper.search.driver import make_searcher

    space = load_space(write_space(tmp_path / "s.yaml", trials=4, epochs=3, params="""
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
"""))
    searcher = make_searcher(space, study_path=tmp_path / "study.db", study_name="s", seed=0)
    for tid in ("done", "stopped", "crashed"):
        assert searcher.suggest(tid)["epochs"] == 3
    done = [0.20, 0.50, 0.40]  # best epoch 2, last epoch lower: the study must hold 0.50, not 0.40
    for e in (1, 2):
        searcher.on_trial_result("done", _result(e, done))
    searcher.on_trial_complete("done", result=_result(3, done))
    stopped = [0.10, 0.15, 0.30]
    searcher.on_trial_result("stopped", _result(1, stopped))
    searcher.on_trial_complete("stopped", result=_result(2, stopped))  # ASHA's STOP at epoch 2 of 3
    searcher.on_trial_complete("crashed", error=True)

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.metric_names == ["best_val_iou"]
    t = {tr.number: tr for tr in study.get_trials()}
    assert t[0].state == optuna.trial.TrialState.COMPLETE and t[0].value == 0.50
    assert t[0].intermediate_values == {1: 0.20, 2: 0.50, 3: 0.40}
    assert t[1].state == optuna.trial.TrialState.PRUNED
    assert t[1].intermediate_values == {1: 0.10, 2: 0.15}  # the stopping epoch is recorded too
    assert t[2].state == optuna.trial.TrialState.FAIL and t[2].intermediate_values == {}


def test_trial_checkpoints_carry_the_best_epochs_head_across_a_resume():
    import torch

    from sweeper.search.trial import run_trial
    from sweeper.training.config import TrainConfig

    data = learnable_data()
    # adamw at a high lr overshoots on this task: its val IoU goes up and down, so best != last somewhere
    cfg = TrainConfig(optimizer="adamw", lr=0.3, epochs=5, batch_size=4, device="cpu", threads=1, **SMALL)
    reported: list[tuple[dict, dict]] = []
    run_trial(cfg, data, report=lambda m, s: reported.append((m, s)))
    ious = [m["val_iou"] for m, _ in reported]
    for k, (m, state) in enumerate(reported):
        best_k = int(np.argmax(ious[:k + 1]))  # earliest on ties, as np.argmax
        assert m["best_val_iou"] == ious[best_k] and m["best_epoch"] == best_k + 1
        assert state["best"]["epoch"] == best_k + 1 and state["best"]["val_iou"] == ious[best_k]
        best_head = reported[best_k][1]["head"]  # the latest head as it was at the best epoch
        assert all(torch.equal(state["best"]["head"][n], best_head[n]) for n in best_head)
    assert reported[-1][1]["best"]["epoch"] != len(ious), f"no epoch after the best one: {ious}"
    # resuming from epoch 2 keeps the best head found before the interruption
    again: list[tuple[dict, dict]] = []
    run_trial(cfg, data, report=lambda m, s: again.append((m, s)), resume=reported[1][1])
    assert [m["epoch"] for m, _ in again] == [3, 4, 5]
    assert again[-1][1]["best"]["epoch"] == reported[-1][1]["best"]["epoch"]
    assert all(torch.equal(again[-1][1]["best"]["head"][n], reported[-1][1]["best"]["head"][n])
               for n in again[-1][1]["best"]["head"])


def test_asha_never_stops_the_baseline_but_still_stops_the_others(tmp_path):
    # Crafted results straight into the scheduler, as Ray's controller hands them over.
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from sweeper.search.driver import make_scheduler

    space = load_space(write_space(tmp_path / "s.yaml", trials=3, epochs=4, params="""
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
"""))  # rungs at epochs 1, 2 and 4 (= max_epochs, the end)
    sched = make_scheduler(space)
    other = Trial("t", config={"lr": 1e-3, "epochs": 4}, trial_id="other", stub=True)
    base = Trial("t", config={"lr": 1e-4, "epochs": 4}, trial_id="base", stub=True)  # the phase-1 point
    mid = Trial("t", config={"lr": 1e-5, "epochs": 4}, trial_id="mid", stub=True)
    low = Trial("t", config={"lr": 2e-5, "epochs": 4}, trial_id="low", stub=True)
    for t in (other, base, mid, low):
        sched.on_trial_add(None, t)

    def step(trial, epoch, iou):
        return sched.on_trial_result(None, trial, {"epoch": epoch, "val_iou": iou})

    assert step(other, 1, 0.50) == TrialScheduler.CONTINUE  # first at the rung
    # the baseline is below the rung's cutoff at every rung, and still runs to its last epoch
    assert [step(base, e, 0.10) for e in (1, 2, 3)] == [TrialScheduler.CONTINUE] * 3
    assert step(base, 4, 0.10) == TrialScheduler.STOP  # its natural end (max_epochs), not an early stop
    # its results still count at the rungs: the epoch-1 cutoff is now the median of 0.50 and 0.10
    assert step(mid, 1, 0.40) == TrialScheduler.CONTINUE  # 0.40 >= 0.30
    assert step(low, 1, 0.20) == TrialScheduler.STOP  # 0.20 < median(0.50, 0.10, 0.40) = 0.40
    # stopped: `low` early and the baseline at its end; the baseline's overruled stop is not counted
    assert "num_stopped=2" in sched.debug_string()


@pytest.mark.slow
def test_smoke_sweep_writes_tables_and_trial0_is_the_baseline(tmp_path):
    space = load_space(ROOT / "search_spaces" / "smoke.yaml")
    trials = run_search(space, learnable_data(), options(tmp_path, "smoke"), trial_overrides=SMALL, progress=False)
    run = tmp_path / "smoke"
    table = pd.read_csv(run / "trials.csv")
    history = pd.read_csv(run / "history.csv")
    assert len(table) == 3 and list(table.trial) == [0, 1, 2]
    t0 = table.iloc[0]
    assert t0.baseline and t0.optimizer == "sgd" and t0.lr == 1e-4 and t0.momentum == 0.9
    assert set(table.status) == {"TERMINATED"}
    # columns the space neither searches nor fixes still hold the value each trial ran with
    assert (table.class_weights == "none").all() and (table.batch_size == 2).all()
    assert (table.schedule == "constant").all()
    assert not history.duplicated(["trial", "epoch"]).any()
    assert (table.delta_vs_published == table.best_val_iou - 0.2971).all()
    assert table.delta_vs_baseline_trial.iloc[0] == 0.0
    # the table returned is the table written (through the same CSV round trip: None and NaN alike)
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(trials.to_csv(index=False))), table)
    assert_study_matches_tables(run, table, history)


def assert_study_matches_tables(run: Path, table: pd.DataFrame, history: pd.DataFrame) -> None:
    """The Optuna study holds what trials.csv ranks by: each finished trial's best epoch, every epoch
    as an intermediate value, ASHA's stops as PRUNED; the objective is named."""
    import optuna

    study = optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}")
    assert study.metric_names == ["best_val_iou"]
    by_number = {t.number: t for t in study.get_trials()}
    assert sorted(by_number) == table.trial.tolist()
    for row in table.itertuples():
        st = by_number[row.trial]
        assert st.params["lr"] == pytest.approx(row.lr, rel=1e-12)  # the same trial on both sides
        curve = history[history.trial == row.trial].set_index("epoch").val_iou.to_dict()
        assert st.intermediate_values == pytest.approx(curve, abs=1e-12)
        if row.stopped_early:
            assert st.state == optuna.trial.TrialState.PRUNED and len(curve) == row.epochs_run
        else:
            assert st.state == optuna.trial.TrialState.COMPLETE
            assert st.value == pytest.approx(row.best_val_iou, abs=1e-12)


@pytest.mark.slow
def test_asha_stopped_trial_is_pruned_and_best_heads_are_kept(tmp_path):
    # Trial 0 (adam at lr 1e-4) scores IoU 0 at epoch 1 and above 0 at epoch 2. Trial 1 is TPE's random
    # start-up draw (sampler seed 0: lr 1e-9), which still scores 0 at epoch 2: below trial 0's result
    # at the epoch-2 rung, so ASHA stops it there, one epoch short of its 3.
    (tmp_path / "stop.yaml").write_text(STOP_SPACE)
    space = load_space(tmp_path / "stop.yaml")
    table = run_search(space, learnable_data(n_train=64), options(tmp_path, "stop", trials=2, max_concurrent=1, seed=0),
                       trial_overrides=SMALL, progress=False)
    history = pd.read_csv(tmp_path / "stop" / "history.csv")
    assert table.lr.tolist() == [1e-4, 1e-9]
    assert table.stopped_early.tolist() == [False, True] and table.epochs_run.tolist() == [3, 2]
    assert_study_matches_tables(tmp_path / "stop", table, history)
    # every trial's checkpoint holds its best epoch's head beside the latest state
    from sweeper import files
    files.write_json(tmp_path / "stop" / "sweep.json", {"backbone": {}, "data": {}, "cache": {}})  # as `search` does
    import torch

    from sweeper.rundir.heads import load_run_head
    from sweeper.rundir.layout import BEST_KEY, STATE_FILE

    for row in table.itertuples():
        (ckpt,) = (tmp_path / "stop" / "ray").glob(f"*_{row.trial_id}_*/checkpoint_*/{STATE_FILE}")
        state = torch.load(ckpt, weights_only=True)
        assert state[BEST_KEY]["epoch"] == row.best_epoch and state[BEST_KEY]["val_iou"] == row.best_val_iou
        assert state["history"][-1]["epoch"] == row.epochs_run
        # evaluate scores that head by default, and says which epoch its validation figures are from
        best, last = load_run_head(tmp_path / "stop", trial=row.trial), load_run_head(
            tmp_path / "stop", trial=row.trial, epoch="last")
        assert best.validation["epoch"] == row.best_epoch and best.selection["epoch"] == row.best_epoch
        assert best.validation["val_iou"] == pytest.approx(row.best_val_iou, abs=1e-12)
        assert all(torch.equal(best.state[k], state[BEST_KEY]["head"][k]) for k in best.state)
        assert last.validation["epoch"] == row.epochs_run and last.selection["epoch"] == row.epochs_run
        assert all(torch.equal(last.state[k], state["head"][k]) for k in last.state)


STOP_SPACE = """
metric: val_iou
mode: max
trials: 2
max_concurrent: 1
asha: {max_epochs: 3, grace_period: 1, reduction_factor: 2}
fixed: {epochs: 3, train_metrics: false, optimizer: adam}
params:
  lr: {type: categorical, choices: [1.0e-4, 1.0e-9, 1.0e-8, 1.0e-7]}
"""


@pytest.mark.slow
def test_without_early_stopping_the_trial_asha_would_stop_runs_its_epochs(tmp_path):
    # the sweep of test_asha_stopped_trial_is_pruned_and_best_heads_are_kept, ASHA off (SearchMethod): trial 1
    # (lr 1e-9), which ASHA stops at epoch 2 there, runs all 3 epochs and its study entry is COMPLETE
    from sweeper.search.options import SearchMethod

    space = load_space(write_text(tmp_path / "stop.yaml", STOP_SPACE))
    table = run_search(space, learnable_data(n_train=64), options(tmp_path, "full", trials=2, max_concurrent=1, seed=0),
                       trial_overrides=SMALL, progress=False, method=SearchMethod(early_stopping=False))
    assert table.lr.tolist() == [1e-4, 1e-9]
    assert table.stopped_early.tolist() == [False, False] and table.epochs_run.tolist() == [3, 3]
    assert_study_matches_tables(tmp_path / "full", table, pd.read_csv(tmp_path / "full" / "history.csv"))


def test_random_sampling_without_the_phase1_trial_draws_what_optunas_random_sampler_draws(tmp_path):
    import optuna

    from sweeper.errors import SweeperError
    from sweeper.search.driver import make_searcher
    from sweeper.search.options import SearchMethod

    space = load_space(ROOT / "search_spaces" / "phase2.yaml")
    method = SearchMethod(sampler="random", baseline_trial=False)
    searcher = make_searcher(space, study_path=tmp_path / "study.db", study_name="r", seed=3, method=method)
    drawn = [searcher.suggest(f"t{i}") for i in range(3)]
    alone = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    expected = [space.suggest(alone.ask()) for _ in range(3)]
    assert [d["lr"] for d in drawn] == [e["lr"] for e in expected]  # the seed reaches the sampler; no trial 0 first
    assert [d["optimizer"] for d in drawn] == [e["optimizer"] for e in expected]
    default = make_searcher(space, study_path=tmp_path / "study2.db", study_name="d", seed=3)
    assert default.suggest("t0")["lr"] == 1e-4  # sweeper's own: the phase-1 point first
    with pytest.raises(SweeperError, match="sampler must be one of tpe, random, got 'grid'"):
        SearchMethod(sampler="grid")


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.slow
def test_trial0_metrics_equal_a_direct_train_call(tmp_path):
    from sweeper.training.train import train

    data = learnable_data()
    space = load_space(ROOT / "search_spaces" / "smoke.yaml")
    run_search(space, data, options(tmp_path, "eq", trials=1, max_concurrent=1), trial_overrides=SMALL, progress=False)
    history = pd.read_csv(tmp_path / "eq" / "history.csv")
    cfg = space.to_config(space.baseline_point()).replace(**SMALL, device="cpu", threads=1)
    direct = train(cfg, data)
    assert history.val_iou.tolist() == pytest.approx([r["val_iou"] for r in direct.history], abs=1e-6)
    assert history.train_loss.tolist() == pytest.approx([r["train_loss"] for r in direct.history], abs=1e-6)


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # lr 1e6 makes SGD diverge: train() raises TrainingDiverged inside that trial only.
    space = load_space(write_space(tmp_path / "fail.yaml", trials=4, params="""
  lr: {type: categorical, choices: [1.0e-4, 1.0e+6]}
  optimizer: {type: categorical, choices: [sgd]}
"""))
    table = run_search(space, learnable_data(), options(tmp_path, "fail", trials=4, seed=3), trial_overrides=SMALL,
                       progress=False)
    failed = table[table.status == "ERROR"]
    assert len(failed) >= 1 and (failed.lr == 1e6).all()
    assert failed.error.str.contains("training loss became").all()
    assert (failed.node_losses == 0).all()  # its own error: never retried (sweeper.search.recovery)
    for trial_id in failed.trial_id:  # Ray's record of the trial's failures: one each
        (error,) = (tmp_path / "fail" / "ray").glob(f"*_{trial_id}_*/error.txt")
        assert error.read_text().count("Failure # ") == 1
    assert (table[table.status == "TERMINATED"].lr == 1e-4).all() and len(table) == 4
    with sqlite3.connect(tmp_path / "fail" / "study.db") as db:
        states = [r[0] for r in db.execute("select state from trials order by number")]
    assert states.count("FAIL") == len(failed)


@pytest.mark.slow
def test_fractional_gpu_trials_get_their_share_of_one_gpu(tmp_path):
    # Whether Ray packs four 0.25-GPU trials on one GPU at once is Ray's business (and asserting it from
    # timestamps depended on timing); ours is what each trial asks for and what it is granted and records.
    space = load_space(write_space(tmp_path / "gpu.yaml", trials=2, epochs=1, concurrent=2, params="""
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
"""))
    table = run_search(space, learnable_data(), options(tmp_path, "gpu", trials=2, max_concurrent=2,
                                                        gpus_per_trial=0.25, cpus_per_trial=0.5),
                       trial_overrides=SMALL, progress=False)
    assert len(table) == 2 and set(table.status) == {"TERMINATED"}
    assert (table.gpu_share == 0.25).all()
    for trial_dir in (tmp_path / "gpu" / "ray").glob("trial_main_*"):
        rows = pd.DataFrame(read_jsonl(trial_dir / "result.json"))
        assert (rows.gpu_ids.astype(str) == "0").all()  # Ray gave each trial a share of logical GPU 0
        assert (rows.gpu_share == 0.25).all()


def test_cache_is_built_once_then_read_back(tmp_path):
    # (The old version also counted backbone forwards after a sweep, which cannot change: trials are
    # handed cached arrays, never the backbone. test_trials_receive_the_cached_arrays_without_a_copy
    # checks what trials do get.)
    root = make_dataset(tmp_path / "data", train=4, val=2)
    backbone = create_backbone("random_vits14")
    kw = dict(height=56, width=112, label_mode=LabelMode.PHASE1, cache_root=tmp_path / "cache", show_progress=False)
    data = load_train_data(root, backbone, **kw)
    assert backbone.forward_count == 6  # every image once
    again = load_train_data(root, backbone, **kw)  # a second sweep's preparation hits the cache
    assert backbone.forward_count == 6
    assert np.array_equal(np.asarray(again.train.tokens.array), np.asarray(data.train.tokens.array))
    assert np.array_equal(again.val.labels, data.val.labels)


def test_trials_receive_the_cached_arrays_without_a_copy():
    # What a trial gets through the object store: read-only views of Ray's shared memory, wrapped
    # by TrainData.from_arrays without a copy (a copy per trial is what the object store avoids).
    from sweeper.data.tokens import TrainData
    from sweeper.search.trial import trial_arrays

    data = learnable_data()
    arrays = trial_arrays(data)
    got = ray.get(ray.put(arrays))
    assert not got["train_tokens"].flags.writeable and not got["train_tokens"].flags.owndata
    wrapped = TrainData.from_arrays(**got)
    assert np.shares_memory(np.asarray(wrapped.train.tokens.array), got["train_tokens"])
    assert np.shares_memory(wrapped.val.labels, got["val_labels"])
    assert np.array_equal(got["train_counts"], np.asarray(data.train_pixel_counts()))


def test_summarise_confirm_on_known_numbers():
    from sweeper.search.confirm import summarise_confirm

    runs = pd.DataFrame({"trial": [0, 0, 0, 5, 5, 5, 7, 7, 7],
                         "best_val_iou": [0.30, 0.31, 0.29, 0.40, 0.41, 0.39, 0.31, 0.33, 0.29]})
    s = summarise_confirm(runs, baseline_trial=0).set_index("trial")
    assert s.loc[0, "mean"] == pytest.approx(0.30) and s.loc[0, "std"] == pytest.approx(0.01)
    assert s.loc[5, "gain_vs_baseline"] == pytest.approx(0.10) and bool(s.loc[5, "gain_exceeds_spread"])
    assert s.loc[7, "gain_vs_baseline"] == pytest.approx(0.01) and not bool(s.loc[7, "gain_exceeds_spread"])
    assert not bool(s.loc[0, "gain_exceeds_spread"])


@pytest.mark.slow
def test_confirm_reruns_baseline_and_top_trials_with_seeds(tmp_path):
    from sweeper.search.confirm import run_confirm

    data = learnable_data()
    space = load_space(ROOT / "search_spaces" / "smoke.yaml")
    opts = options(tmp_path, "conf")
    run_search(space, data, opts, trial_overrides=SMALL, progress=False)
    summary = run_confirm(tmp_path / "conf", space, data, opts, top=1, seeds=2, progress=False)
    runs = pd.read_csv(tmp_path / "conf" / "confirm.csv")
    assert len(runs) == 4 and sorted(runs.seed.unique()) == [0, 1] and set(runs.status) == {"TERMINATED"}
    assert len(summary) == 2 and summary.baseline.sum() == 1 and (summary.seeds == 2).all()
    base = summary[summary.baseline].iloc[0]
    assert base.gain_vs_baseline == 0 and base.trial == 0
    # seed 0 of the baseline repeats the sweep's trial 0 exactly
    trials = pd.read_csv(tmp_path / "conf" / "trials.csv")
    again = runs[(runs.trial == 0) & (runs.seed == 0)].best_val_iou.iloc[0]
    assert again == pytest.approx(trials.loc[trials.trial == 0, "best_val_iou"].iloc[0], abs=1e-6)


def test_progress_lines_count_trials_and_track_the_best(tmp_path):
    import io
    from types import SimpleNamespace

    from sweeper.search.progress import ProgressPrinter

    space = load_space(write_space(tmp_path / "s.yaml", trials=3, epochs=2, params="""
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
"""))
    out = io.StringIO()
    printer = ProgressPrinter(space, stream=out)

    def trial(n, lr):
        return SimpleNamespace(experiment_tag=f"{n + 1}_lr={lr}", config={"lr": lr, "epochs": 2}, status="RUNNING",
                               last_result=None, trial_id=f"t{n}", path=None, error_msg=None)

    t0, t1, t2 = trial(0, 1e-4), trial(1, 1e-3), trial(2, 1e-5)
    trials = [t0, t1, t2]
    t2.status = "PENDING"

    def result(t, epoch, iou):
        r = {"epoch": epoch, "val_iou": iou}
        printer.on_result(trials, t, r)
        t.last_result = r

    result(t0, 1, 0.20)
    result(t1, 1, 0.30)
    result(t0, 2, 0.25)
    printer.on_end(trials, t0, "done")
    t0.status = "TERMINATED"
    printer.on_end(trials, t1, "done")  # ASHA stopped it after epoch 1 of 2
    t1.status = "TERMINATED"
    t2.status = "RUNNING"
    result(t2, 1, float("nan"))  # a NaN score is shown, never taken as the best
    result(t2, 2, None)  # a result without the metric (it happens on a trial's last, duplicate report)
    lines = [ln.split("] ", 1)[1] for ln in out.getvalue().splitlines()]
    assert lines == [
        "trial   0 epoch 1/2: val_iou 0.2000  | best 0.2000 (trial 0), baseline trial 0.2000, published 0.2971"
        " | running 2 | done 0 | stopped early 0 | failed 0 | of 3",
        "trial   1 epoch 1/2: val_iou 0.3000  | best 0.3000 (trial 1), baseline trial 0.2000, published 0.2971"
        " | running 2 | done 0 | stopped early 0 | failed 0 | of 3",
        "trial   0 epoch 2/2: val_iou 0.2500  | best 0.3000 (trial 1), baseline trial 0.2500, published 0.2971"
        " | running 2 | done 0 | stopped early 0 | failed 0 | of 3",
        "trial   0 done | running 1 | done 1 | stopped early 0 | failed 0 | of 3",
        "trial   1 stopped early by ASHA at epoch 1 | running 0 | done 1 | stopped early 1 | failed 0 | of 3",
        "trial   2 epoch 1/2: val_iou nan  | best 0.3000 (trial 1), baseline trial 0.2500, published 0.2971"
        " | running 1 | done 1 | stopped early 1 | failed 0 | of 3",
        "trial   2 epoch 2/2: val_iou -  | best 0.3000 (trial 1), baseline trial 0.2500, published 0.2971"
        " | running 1 | done 1 | stopped early 1 | failed 0 | of 3",
    ]


def test_summary_table_says_which_epoch_each_score_is_from(tmp_path):
    from sweeper.search.tables import summary_table

    space = load_space(ROOT / "search_spaces" / "smoke.yaml")
    t = pd.DataFrame({"trial": [0, 1], "status": ["TERMINATED"] * 2, "baseline": [True, False],
                      "optimizer": ["sgd", "adam"], "lr": [1e-4, 1e-3], "epochs_run": [2, 2],
                      "best_val_iou": [0.1, 0.3], "best_epoch": [2, 1], "best_val_miou": [0.1, 0.2],
                      "delta_vs_baseline_trial": [0.0, 0.2], "delta_vs_published": [-0.1971, 0.0029]})
    header, first, second = summary_table(t, space).splitlines()
    cols = header.split()
    assert cols.index("best_epoch") == cols.index("best_val_iou") + 1
    assert first.split()[:1] == ["1"] and first.split()[cols.index("best_epoch")] == "1"
    assert second.startswith("0 (phase 1)") and second.split()[cols.index("best_epoch") + 2] == "2"


def test_the_searcher_says_nothing_experimental_and_leaves_warning_filters_alone(tmp_path):
    import warnings

    from optuna.exceptions import ExperimentalWarning

    from sweeper.search.driver import make_searcher

    space = load_space(write_space(tmp_path / "s.yaml", trials=4, epochs=3, params="""
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
"""))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        searcher = make_searcher(space, study_path=tmp_path / "study.db", study_name="s", seed=0)
        searcher.suggest("t0")
        after = list(warnings.filters)
    assert not [w for w in caught if issubclass(w.category, ExperimentalWarning)]
    assert after == before  # no filter left behind for the rest of the process
