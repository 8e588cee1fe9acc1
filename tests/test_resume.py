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

from conftest import make_dataset

ROOT = Path(__file__).resolve().parent.parent

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
