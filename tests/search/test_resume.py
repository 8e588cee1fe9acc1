"""Kill a sweep's driver with SIGKILL mid-way, resume it, and check nothing is lost or counted twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, make_dataset

SPACE = """
metric: val_iou
mode: max
trials: 4
max_concurrent: 1
asha: {max_epochs: 3, grace_period: 3, reduction_factor: 2}
fixed: {epochs: 3, train_metrics: false, image_height: 56, image_width: 112}
params:
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
"""


def epochs_reported(trial_dir: Path) -> list[int]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)["epoch"])
        except (json.JSONDecodeError, KeyError):
            pass
    return out


@pytest.mark.slow
def test_sigkill_then_resume_keeps_finished_trials_and_continues_the_rest(tmp_path):
    data = make_dataset(tmp_path / "data", train=8, val=2)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    args = [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(data), "--backbone", "random_vits14",
            "--space", str(space), "--name", "killme", "--out", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache")]
    exp = tmp_path / "results" / "killme" / "ray"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    killed_in = None
    try:
        while time.time() < deadline and proc.poll() is None:
            trials = sorted(exp.glob("trial_main_*"), key=lambda p: int(p.name.split("_")[3]))
            # kill once trial 0 is done and trial 1 has reported (and checkpointed) its first epoch
            if len(trials) >= 2 and epochs_reported(trials[0]) == [1, 2, 3] and epochs_reported(trials[1]):
                killed_in = trials[1]
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None and killed_in is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_in is not None, f"sweep ended or timed out before the kill: {proc.stderr.read()[-2000:]}"
    seen_before = epochs_reported(killed_in)
    assert 1 <= len(seen_before) < 3

    resumed = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    table = pd.read_csv(tmp_path / "results" / "killme" / "trials.csv")
    history = pd.read_csv(tmp_path / "results" / "killme" / "history.csv")
    assert len(table) == 4 and table.trial.tolist() == [0, 1, 2, 3]  # the budget holds: 4 trials, not 5
    assert set(table.status) == {"TERMINATED"} and table.trial_id.is_unique
    assert (table.epochs_run == 3).all()
    assert not history.duplicated(["trial", "epoch"]).any() and len(history) == 12
    # the interrupted trial continued from its checkpoint: its early epochs were not trained again
    after = epochs_reported(killed_in)
    assert after[: len(seen_before)] == seen_before and sorted(set(after)) == [1, 2, 3]
    assert len(after) == 3, f"epochs re-run after resume: {after}"
    with sqlite3.connect(tmp_path / "results" / "killme" / "study.db") as db:
        states = [r[0] for r in db.execute("select state from trials")]
        values = [r[0] for r in db.execute("select v.value from trials t join trial_values v "
                                           "on v.trial_id = t.trial_id order by t.number")]
        steps = db.execute("select count(*) from trial_intermediate_values").fetchone()[0]
    assert states.count("COMPLETE") == 4
    # the resumed study still holds what trials.csv ranks by, and each epoch once
    assert values == pytest.approx(table.best_val_iou.tolist(), abs=1e-12) and steps == 12


def _trial_folders(exp: Path) -> list[Path]:
    """Ray's trial folders (trial_main_<run id>_<NNNNN>_<tag>), in creation order."""
    return sorted(exp.glob("trial_main_*"), key=lambda p: int(p.name.split("_")[3]))


@pytest.mark.slow
def test_sigkill_right_after_a_trials_first_checkpoint_resumes_that_trial_and_keeps_the_study_numbered(tmp_path):
    """The kill lands after trial 1 wrote checkpoint_000000 but before Ray's next experiment snapshot (which
    is what knows trial 1 exists): resume must continue trial 1 from that checkpoint, close its study entry,
    and keep the study's numbers equal to trials.csv's, within the budget."""
    import torch

    data = make_dataset(tmp_path / "data", train=8, val=2)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    run = tmp_path / "results" / "early"
    args = [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(data), "--backbone", "random_vits14",
            "--space", str(space), "--name", "early", "--out", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "SWEEPER_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    deadline = time.time() + 240
    saved = None
    try:
        while time.time() < deadline and proc.poll() is None:
            states = [s for f in _trial_folders(run / "ray")[1:] for s in f.glob("checkpoint_*/state.pt")]
            if states:  # trial 1's first checkpoint is on disk: kill at once
                os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.5)  # a state.pt being renamed into place is complete by now
                saved = torch.load(states[0], map_location="cpu", weights_only=True)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and saved is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert saved is not None, f"sweep ended or timed out before the kill: {proc.stderr.read()[-2000:]}"
    first = saved["history"][0]

    resumed = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    table = pd.read_csv(run / "trials.csv")
    history = pd.read_csv(run / "history.csv")
    assert table.trial.tolist() == [0, 1, 2, 3]  # the budget holds: 4 trials, not 5
    assert set(table.status) == {"TERMINATED"} and (table.epochs_run == 3).all()
    assert not history.duplicated(["trial", "epoch"]).any() and len(history) == 12
    with sqlite3.connect(run / "study.db") as db:
        rows = db.execute("select t.number, t.state, v.value from trials t left join trial_values v "
                          "on v.trial_id = t.trial_id order by t.number").fetchall()
        steps = db.execute("select count(*) from trial_intermediate_values").fetchone()[0]
    assert steps == 12  # every epoch once, trial 1's epoch 1 too (told to the study by the resume if need be)
    assert [r[0] for r in rows] == [0, 1, 2, 3], rows  # no study entry left RUNNING, none extra
    assert {r[1] for r in rows} == {"COMPLETE"}, rows
    # study number n is trials.csv's trial n: the same objective value
    assert [r[2] for r in rows] == pytest.approx(table.best_val_iou.tolist(), abs=1e-12)
    # trial 1 continued from its checkpoint: its finished state still holds the epoch 1 trained before the kill
    # (a retrain from scratch would have other timings), and 3 epochs in all
    finals = [torch.load(s, map_location="cpu", weights_only=True) for s in run.glob("ray/*/checkpoint_*/state.pt")]
    continued = [s for s in finals if s["history"][0] == first and len(s["history"]) > 1]
    assert len(continued) == 1 and [r["epoch"] for r in continued[0]["history"]] == [1, 2, 3]
    assert table.loc[1, "best_val_iou"] == pytest.approx(max(r["val_iou"] for r in continued[0]["history"]))


# --------------------------------------------------------------------------- a run folder moved or copied, then resumed


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def study_rows(run: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(run / "study.db") as db:
        return db.execute("select number, state from trials order by number").fetchall()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 3-trial sweep killed (SIGKILL of its whole session) once trial 1 has checkpointed an epoch: (its command
    line without --out/--name, the killed run folder). Tests copy the folder; none resumes it in place."""
    tmp = tmp_path_factory.mktemp("interrupted")
    data = make_dataset(tmp / "data", train=8, val=2)
    space = tmp / "space.yaml"
    space.write_text(SPACE.replace("trials: 4", "trials: 3"))
    base = [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(data), "--backbone", "random_vits14",
            "--space", str(space), "--cache-dir", str(tmp / "cache")]
    run = tmp / "results" / "orig"
    proc = subprocess.Popen(base + ["--name", "orig", "--out", str(tmp / "results")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, killed = time.time() + 300, False
    try:
        while time.time() < deadline and proc.poll() is None:
            if [s for f in _trial_folders(run / "ray")[1:] for s in f.glob("checkpoint_*/state.pt")]:
                time.sleep(0.5)
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed, f"sweep ended or timed out before the kill: {proc.stderr.read()[-2000:]}"
    time.sleep(6)  # the reaper stops the killed driver's Ray processes
    (run / ".lock").unlink(missing_ok=True)  # as a kill -9 leaves it: the resume takes it over
    return base, run


def resumed_completely(proc: subprocess.CompletedProcess, run: Path) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(run / "trials.csv")
    assert table.trial.tolist() == [0, 1, 2] and set(table.status) == {"TERMINATED"}
    assert [s for _, s in study_rows(run)] == ["COMPLETE"] * 3


@pytest.mark.slow
def test_a_moved_run_folder_resumes_where_it_is_now(interrupted, tmp_path):
    import shutil

    base, run = interrupted
    staged = tmp_path / "old" / "orig"
    shutil.copytree(run, staged)  # the folder as it was: then moved away from that path
    moved = tmp_path / "new place" / "orig"
    moved.parent.mkdir()
    staged.rename(moved)
    proc = subprocess.run(base + ["--name", "orig", "--out", str(moved.parent), "--resume"], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    resumed_completely(proc, moved)
    assert not staged.exists()  # nothing written where it used to be
    for f in moved.rglob("*"):  # no file of the folder names its old path
        if f.is_file() and f.suffix in (".json", ".jsonl", ".csv", ".md", ".html"):
            assert str(staged) not in f.read_text(errors="replace"), f


@pytest.mark.slow
def test_a_copied_run_folder_resumes_on_its_own_and_leaves_the_original_untouched(interrupted, tmp_path):
    import shutil

    base, run = interrupted
    original = tmp_path / "a" / "orig"
    shutil.copytree(run, original)  # the original stays where it is, next to its copy
    copy = tmp_path / "b" / "orig"
    shutil.copytree(original, copy)
    before = snapshot(original)
    proc = subprocess.run(base + ["--name", "orig", "--out", str(copy.parent), "--resume"], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    resumed_completely(proc, copy)
    assert snapshot(original) == before  # study.db, checkpoints, epochs.jsonl: byte for byte
    assert "interrupted" not in proc.stderr

    # the same copy under another --name: works or is refused in one line, never a crash
    other = tmp_path / "c" / "renamed"
    shutil.copytree(original, other)
    proc = subprocess.run(base + ["--name", "renamed", "--out", str(other.parent), "--resume"], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert "Traceback" not in proc.stderr and "UpdateFinishedTrialError" not in proc.stderr, proc.stderr[-3000:]
    if proc.returncode == 0:
        resumed_completely(proc, other)
    else:
        assert proc.returncode == 2 and len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert snapshot(original) == before


# --------------------------------------------------------------------------- SIGTERM (timeout, Slurm, Kubernetes, docker stop)


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_exits_143_and_the_resume_records_each_epoch_once(tmp_path):
    data = make_dataset(tmp_path / "data", train=8, val=2)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("trials: 4", "trials: 3"))
    run = tmp_path / "results" / "term"
    args = [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(data), "--backbone", "random_vits14",
            "--space", str(space), "--name", "term", "--out", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline, sent = time.time() + 300, False
    try:
        while time.time() < deadline and proc.poll() is None:
            if [s for f in _trial_folders(run / "ray")[1:] for s in f.glob("checkpoint_*/state.pt")]:
                proc.send_signal(signal.SIGTERM)  # the driver only, as timeout and docker stop send it
                sent = True
                break
            time.sleep(0.1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert sent, f"sweep ended or timed out before the signal: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
    assert proc.returncode == 143, err[-3000:]
    assert f"sweeper search --resume --name term --out {tmp_path / 'results'}" in err
    for noise in ("SIGTERM received", "Traceback", "WARNING", "Tuner.restore"):
        assert noise not in err, err[-3000:]
    assert not (run / ".lock").exists()

    resumed = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = pd.read_csv(run / "trials.csv")
    assert table.trial.tolist() == [0, 1, 2] and set(table.status) == {"TERMINATED"}
    assert (table.epochs_run == 3).all() and not table.incomplete.any()
    for f in _trial_folders(run / "ray"):  # each folder's own record: every epoch once
        epochs = [json.loads(line)["epoch"] for line in (f / "epochs.jsonl").read_text().splitlines()]
        assert len(epochs) == len(set(epochs)), (f.name, epochs)
