"""A run folder is data: tables, confirm configs and evaluate's heads come from the trials' own JSON records,
never from Ray's pickled state; --resume (which needs that state) refuses a folder others can write or own."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from sweeper import files
from sweeper.errors import SweeperError
from sweeper.rundir import layout, records
from sweeper.rundir.heads import load_run_head
from sweeper.rundir.resume import check_trusted, decide
from sweeper.search import relocate, tables
from sweeper.search.space import load_space

SPACE = ROOT / "search_spaces" / "smoke.yaml"  # lr, optimizer, momentum when sgd; 2 epochs


class Touch:
    """Unpickling this creates a file: the proof that someone ran a results folder's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def poison(exp: Path, marker: Path) -> None:
    """Ray's state files as a hostile folder could hold them: each one runs code when Ray loads it."""
    payload = pickle.dumps(Touch(marker))
    state = {"trial_data": [], "runner_data": {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()},
             "stats": {"start_time": 0.0}}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    (exp / "tuner.pkl").write_bytes(payload)
    (exp / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(payload)


def trial_folder(exp: Path, name: str, *, number: int, config: dict, started: float, epochs: list[dict],
                 end: dict | None, head: float | None, marker: Path) -> Path:
    """A trial folder as a sweep leaves it: the trial's records, Ray's own pickles, maybe a checkpoint."""
    folder = exp / name
    folder.mkdir()
    records.write_trial_start(folder, {**config, layout.TRIAL_KEY: number}, trial_id=name.split("_")[2])
    files.write_json(folder / layout.TRIAL_CONFIG, {**files.read_json(folder / layout.TRIAL_CONFIG), "started": started})
    for r in epochs:
        files.append_jsonl(folder / layout.TRIAL_EPOCHS, r)
    if end is not None:
        files.write_json(folder / layout.TRIAL_END, end)
    (folder / "params.pkl").write_bytes(pickle.dumps(Touch(marker)))
    if head is not None:
        (folder / "checkpoint_000000").mkdir()
        history = [{"epoch": r["epoch"], "val_iou": r["val_iou"]} for r in epochs]
        torch.save({"head": {"w": torch.full((2,), head)}, "history": history},
                   folder / "checkpoint_000000" / layout.STATE_FILE)
    return folder


def epoch(n: int, iou: float) -> dict:
    return {"epoch": n, "val_iou": iou, "val_miou": iou / 2, "train_loss": 1.0, "val_loss": 1.0,
            "val_class_iou": {"Trees": iou, "Sky": None}, "elapsed_seconds": float(n)}


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, Path]:
    """Trial 0 (baseline, done), trial 1 (killed after epoch 1, continued in a second folder), trial 2 (failed)."""
    run = tmp_path / "run"
    exp = run / layout.EXPERIMENT_DIR
    exp.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    files.write_json(run / layout.SWEEP_FILE, {"backbone": {}, "data": {}, "cache": {}})
    base = {"lr": 0.0001, "optimizer": "sgd", "momentum": 0.9, "epochs": 2, "train_metrics": False, "threads": 1}
    trial_folder(exp, "trial_main_aaaa_00000_1_lr=0.0001", number=0, config=base, started=1.0,
                 epochs=[epoch(1, 0.2), epoch(2, 0.3)], end={"status": "TERMINATED"}, head=0.0, marker=marker)
    other = {**base, "lr": 0.003, "optimizer": "adam"}
    other.pop("momentum")
    trial_folder(exp, "trial_main_aaaa_00001_2_lr=0.003", number=1, config=other, started=2.0,
                 epochs=[epoch(1, 0.4)], end=None, head=1.0, marker=marker)  # the driver was killed here
    trial_folder(exp, "trial_main_bbbb_00001_2_lr=0.003", number=1, config=other, started=5.0,
                 epochs=[epoch(2, 0.5)], end={"status": "TERMINATED"}, head=2.0, marker=marker)
    trial_folder(exp, "trial_main_aaaa_00002_3_lr=0.01", number=2, config={**other, "lr": 0.01}, started=3.0,
                 epochs=[], end={"status": "ERROR", "error": "TrainingDiverged: training loss became nan"},
                 head=None, marker=marker)
    poison(exp, marker)
    return run, marker


def test_poisoned_ray_state_is_live(sweep):
    """The fixture's poison works: Ray's own reader of the experiment state runs it (what collect once used)."""
    from ray.tune import ExperimentAnalysis

    run, marker = sweep
    try:
        ExperimentAnalysis(str(run / layout.EXPERIMENT_DIR))
    except Exception:  # what it makes of the rest does not matter: the code has run by then
        pass
    assert marker.exists()


def test_tables_confirm_configs_and_evaluate_read_only_the_trials_records(sweep):
    run, marker = sweep
    space = load_space(SPACE)
    trials, history = tables.collect(run, space)
    assert trials.trial.tolist() == [0, 1, 2]
    assert trials.status.tolist() == ["TERMINATED", "TERMINATED", "ERROR"]
    assert trials.baseline.tolist() == [True, False, False]
    # trial 1's epochs come from both its folders; its row is the folder it finished in
    assert trials.epochs_run.tolist() == [2, 2, 0] and trials.trial_id.tolist() == ["aaaa", "bbbb", "aaaa"]
    assert trials.best_val_iou.tolist()[:2] == [0.3, 0.5] and trials.best_epoch.tolist()[:2] == [2, 2]
    assert trials.error.tolist()[2] == "TrainingDiverged: training loss became nan"
    assert history[history.trial == 1].val_iou.tolist() == [0.4, 0.5]
    assert history["val_class_iou/Trees"].tolist() == [0.2, 0.3, 0.4, 0.5]

    configs = records.trial_configs(run)
    assert sorted(configs) == [0, 1, 2] and configs[1]["lr"] == 0.003 and layout.TRIAL_KEY not in configs[1]

    tables.write_tables(run, space)
    head = load_run_head(run, trial=1, epoch="last")
    assert head.weights_file.parent.parent.name.startswith("trial_main_bbbb")  # the continued folder's checkpoint
    assert float(head.state["w"][0]) == 2.0 and head.config.lr == 0.003
    assert not marker.exists()  # nothing of Ray's pickled state was loaded


def test_a_damaged_trial_record_is_one_line(sweep):
    run, _ = sweep
    path = next((run / layout.EXPERIMENT_DIR).glob(f"*/{layout.TRIAL_CONFIG}"))
    path.write_text('{"trial_id": 3}')
    with pytest.raises(SweeperError, match=f"{path}: not a trial record"):
        tables.collect(run, load_space(SPACE))


def test_no_trial_records_is_one_line(tmp_path):
    (tmp_path / "run" / layout.EXPERIMENT_DIR).mkdir(parents=True)
    with pytest.raises(SweeperError, match="no trial records here"):
        tables.collect(tmp_path / "run", load_space(SPACE))


@pytest.mark.parametrize("what", ["run", "ray", "state"])
def test_resume_refuses_a_folder_other_users_can_write(sweep, what):
    run, marker = sweep
    exp = run / layout.EXPERIMENT_DIR
    check_trusted(run)  # the owner's own folder, not world-writable: trusted
    path = {"run": run, "ray": exp, "state": exp / "tuner.pkl"}[what]
    os.chmod(path, path.stat().st_mode | 0o002)
    with pytest.raises(SweeperError, match="writable by other users") as e:
        check_trusted(run)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    # the one resume decision refuses before it reads anything of the folder (sweep.json, ray/)
    (run / layout.SWEEP_FILE).write_text("not read")
    with pytest.raises(SweeperError, match="writable by other users"):
        decide(run, given={}, given_space=None)
    assert not marker.exists()


def test_resume_refuses_a_folder_another_user_owns(sweep, monkeypatch):
    run, _ = sweep
    monkeypatch.setattr(os, "getuid", lambda: run.stat().st_uid + 1)
    with pytest.raises(SweeperError, match="owned by another user") as e:
        check_trusted(run)
    assert str(run) in str(e.value)


def test_search_resume_on_a_world_writable_folder_is_one_line_exit_2(sweep, capsys, monkeypatch, tmp_path):
    from sweeper.cli.main import main

    run, marker = sweep
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    os.chmod(run, 0o777)
    assert main(["-q", "search", "--resume", "--name", run.name, "--out", str(run.parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "writable by other users" in err and str(run) in err
    assert not marker.exists()


def test_a_torn_last_epoch_line_marks_the_trial_incomplete_not_stopped_early(sweep):
    """A finished trial whose epochs.jsonl lost its last line half-written (a copy or write cut short) is not a
    trial ASHA stopped: the tables say its record is incomplete."""
    run, _ = sweep
    folder = next((run / layout.EXPERIMENT_DIR).glob("trial_main_aaaa_00000_*"))  # baseline, 2 of 2 epochs
    path = folder / layout.TRIAL_EPOCHS
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # epoch 2's line torn
    trials, _ = tables.collect(run, load_space(SPACE))
    row = trials[trials.trial == 0].iloc[0]
    assert row.epochs_run == 1 and row.status == "TERMINATED"
    assert not row.stopped_early and row.incomplete
    assert not trials[trials.trial == 1].iloc[0].incomplete  # a clean record of all its epochs


def test_a_continued_trial_drops_the_epochs_after_its_checkpoint(tmp_path):
    """A trial killed after writing epoch 5's line but before Ray knew of epoch 5's checkpoint continues from
    epoch 4: its record keeps epochs 1..4 and the rerun writes epoch 5 once."""
    folder = tmp_path / "trial"
    folder.mkdir()
    for n in range(1, 6):
        files.append_jsonl(folder / layout.TRIAL_EPOCHS, epoch(n, n / 10))
    records.truncate_epochs(folder, 4)
    assert [r["epoch"] for r in files.read_jsonl(folder / layout.TRIAL_EPOCHS)] == [1, 2, 3, 4]
    files.append_jsonl(folder / layout.TRIAL_EPOCHS, epoch(5, 0.9))
    assert [r["epoch"] for r in files.read_jsonl(folder / layout.TRIAL_EPOCHS)] == [1, 2, 3, 4, 5]
    records.truncate_epochs(tmp_path / "none", 3)  # no record yet: nothing to do
    assert not (tmp_path / "none").exists()


def test_a_restored_search_state_keeps_this_runs_concurrency_and_folder(tmp_path):
    """What Ray restores on a resume (the wrappers' saved state) names the concurrency and the experiment folder
    the sweep ran with before: the search generator keeps the current concurrency and this run's folder."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Experiment
    from ray.tune.search import Searcher

    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    before = Experiment("ray", run=lambda config: None, storage_path=str(old))
    saved = relocate.search_generator(Searcher(metric="val_iou", mode="max"), max_concurrent=1, run_dir=old)
    saved._experiment = before
    state, limiter_state = saved.get_state(), saved.searcher.get_state()

    gen = relocate.search_generator(Searcher(metric="val_iou", mode="max"), max_concurrent=3, run_dir=new)
    gen.searcher.set_state(limiter_state)  # as SearchGenerator.restore_from_dir does, wrapper by wrapper
    gen.set_state(state)
    assert gen.searcher.max_concurrent == 3
    storage: StorageContext = gen._experiment.storage
    assert storage.experiment_fs_path == (new / layout.EXPERIMENT_DIR).as_posix()
    assert str(old) not in storage.experiment_fs_path
