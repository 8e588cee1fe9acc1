"""The sweep's study.db while someone else holds it: a real second SQLite connection (what a user's `sqlite3`
query or a dashboard's read does) beside a real sweep. A plain reader never stops the sweep, a short write lock
is waited out, a lock held past the busy timeout is one line with the resume command and exit 2, and nothing is
lost: `--resume` finishes the sweep."""

from __future__ import annotations

import contextlib
import json
import os
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
trials: 3
max_concurrent: 1
asha: {max_epochs: 3, grace_period: 3, reduction_factor: 2}
fixed: {epochs: 3, train_metrics: false, image_height: 28, image_width: 56}
params:
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
"""


def sweep_args(tmp_path: Path, name: str, epochs: int = 3) -> list[str]:
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, train=4, val=2)
        (tmp_path / "space.yaml").write_text(SPACE.replace("max_epochs: 3, grace_period: 3",
                                                           f"max_epochs: {epochs}, grace_period: {epochs}")
                                              .replace("{epochs: 3,", f"{{epochs: {epochs},"))
    return [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(data), "--backbone", "random_vits14",
            "--space", str(tmp_path / "space.yaml"), "--name", name, "--out", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache")]


def start_sweep(tmp_path: Path, name: str, epochs: int = 3, **env: str) -> subprocess.Popen:
    return subprocess.Popen(sweep_args(tmp_path, name, epochs), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "SWEEPER_CACHE": str(tmp_path / "cache"), **env})


def wait_for_first_trial(db: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until the study holds trial 0's first epoch (the sweep runs, Ray has saved its state, and the study is
    written again at the next epoch)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if db.is_file():
            try:  # closed at once: a connection left open keeps the sweep from leaving WAL at its end
                with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)) as con:
                    if con.execute("select count(*) from trial_intermediate_values").fetchone()[0] >= 1:
                        return
            except sqlite3.Error:  # tables not created yet
                pass
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
    pytest.fail(f"the sweep never created its first trial: rc {proc.poll()}\n{err[-3000:]}")


def study_states(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return [s for (s,) in con.execute("select state from trials order by number")]


def assert_finished(run: Path, epochs: int = 3) -> None:
    """All 3 trials ran all their epochs, in the tables and in the study, each once."""
    table = pd.read_csv(run / "trials.csv")
    assert table.trial.tolist() == [0, 1, 2] and set(table.status) == {"TERMINATED"}
    assert (table.epochs_run == epochs).all()
    assert not pd.read_csv(run / "history.csv").duplicated(["trial", "epoch"]).any()
    assert study_states(run / "study.db") == ["COMPLETE"] * 3
    # back to one file at rest where no other connection holds it (best effort: `settle`, tested on its own
    # below; in a loaded CI run a sweep once ended still in WAL): either way every row is in it
    with contextlib.closing(sqlite3.connect(run / "study.db")) as con:
        assert con.execute("pragma journal_mode").fetchone()[0] in ("delete", "wal")
    assert json.loads((run / "sweep.json").read_text())["started_with"]["study_name"] == run.name


@pytest.mark.slow
@pytest.mark.parametrize("how", ["plain reader", "short exclusive lock"])
def test_a_reader_or_a_short_lock_does_not_stop_the_sweep(tmp_path, how):
    """A read transaction held 8 s (longer than SQLite's 5 s default busy timeout), or an exclusive lock held
    8 s: the sweep goes on (WAL: readers never block the writer) or waits, and finishes."""
    run = tmp_path / "results" / "busy"
    proc = start_sweep(tmp_path, "busy")
    try:
        wait_for_first_trial(run / "study.db", proc)
        holder = sqlite3.connect(run / "study.db", timeout=30, isolation_level=None)
        holder.execute("begin" if how == "plain reader" else "begin exclusive")
        holder.execute("select count(*) from trials").fetchone()
        time.sleep(8)
        holder.execute("commit")
        holder.close()
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert_finished(run)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not path.is_file():
        time.sleep(0.01)
    assert path.is_file(), f"{path} never appeared: rc {proc.poll()}"


def lock_until_it_gives_up(db: Path, proc: subprocess.Popen, *, wait) -> str:
    """Once `wait(db, proc)` returns, hold study.db with a `BEGIN EXCLUSIVE` until the sweep exits; its stderr."""
    holder = None
    try:
        wait(db, proc)
        holder = sqlite3.connect(db, timeout=30, isolation_level=None)
        holder.execute("begin exclusive")
        return proc.communicate(timeout=300)[1]  # held until the sweep gives up
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if holder is not None:
            holder.execute("rollback")
            holder.close()


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid-trial", "at a trial's end", "at the start"])
def test_a_lock_held_past_the_busy_timeout_is_one_line_with_the_resume_command(tmp_path, when):
    """Locked while trial 0 runs (Ray's state saved), when trial 0 of 2 epochs ends (its last epoch reaches the
    study with its end: Ray must not call it failed), or as soon as study.db appears (before Ray saved anything):
    each way one line, exit 2, and `--resume` finishes the sweep within its budget."""
    run = tmp_path / "results" / "held"
    epochs = 2 if when == "at a trial's end" else 3
    proc = start_sweep(tmp_path, "held", epochs, SWEEPER_STUDY_TIMEOUT="2")
    err = lock_until_it_gives_up(run / "study.db", proc, wait=wait_for_file if when == "at the start"
                                 else wait_for_first_trial)
    assert proc.returncode == 2, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    line = errors[0]
    assert f"{run / 'study.db'}" in line and "locked" in line
    assert f"pid {os.getpid()}" in line  # the holder: this test's process
    assert f"sweeper search --resume --name held --out {tmp_path / 'results'}" in line

    # nothing lost: the same command with --resume finishes the sweep within its budget
    resumed = subprocess.run(sweep_args(tmp_path, "held", epochs) + ["--resume"], cwd=ROOT, capture_output=True,
                             text=True, timeout=400, env={**os.environ, "SWEEPER_CACHE": str(tmp_path / "cache")})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_finished(run, epochs)


def test_the_busy_timeout_is_generous_by_default_and_read_from_the_environment(monkeypatch):
    from sweeper.search.study_db import busy_timeout

    monkeypatch.delenv("SWEEPER_STUDY_TIMEOUT", raising=False)
    assert busy_timeout() >= 300
    monkeypatch.setenv("SWEEPER_STUDY_TIMEOUT", "2.5")
    assert busy_timeout() == 2.5
    for bad in ("-1", "soon", "0"):
        monkeypatch.setenv("SWEEPER_STUDY_TIMEOUT", bad)
        from sweeper.errors import SweeperError

        with pytest.raises(SweeperError, match="SWEEPER_STUDY_TIMEOUT"):
            busy_timeout()


@pytest.mark.slow
def test_a_resume_after_ray_wrote_its_state_cut_short_starts_the_sweep_in_its_study(tmp_path):
    """A disk that fills while Ray writes tuner.pkl (not written atomically) leaves it truncated, as faults.sh's
    full-disk case found: the sweep stopped before any trial ran. `--resume` then starts it in its study (no
    second baseline) instead of failing on the cut pickle with a traceback."""
    run = tmp_path / "results" / "cut"
    proc = start_sweep(tmp_path, "cut", 2, SWEEPER_STUDY_TIMEOUT="2")
    lock_until_it_gives_up(run / "study.db", proc, wait=wait_for_file)  # stopped at its start, as a full disk does
    assert proc.returncode == 2
    import pickle

    (run / "ray").mkdir(exist_ok=True)
    whole = pickle.dumps({"what": "Ray's tuner state", "pad": list(range(1000))})
    (run / "ray" / "tuner.pkl").write_bytes(whole[: len(whole) // 2])  # what the full disk left
    resumed = subprocess.run(sweep_args(tmp_path, "cut", 2) + ["--resume"], cwd=ROOT, capture_output=True,
                             text=True, timeout=400, env={**os.environ, "SWEEPER_CACHE": str(tmp_path / "cache")})
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert_finished(run, 2)


def test_only_a_whole_tuner_state_is_restorable(tmp_path):
    import pickle

    from sweeper.search.relocate import restorable

    assert not restorable(tmp_path)  # nothing saved
    whole = pickle.dumps({"state": list(range(100))})
    (tmp_path / "tuner.pkl").write_bytes(whole)
    assert restorable(tmp_path)
    (tmp_path / "tuner.pkl").write_bytes(whole[:-1])  # cut before its STOP
    assert not restorable(tmp_path)
    (tmp_path / "tuner.pkl").write_bytes(b"")
    assert not restorable(tmp_path)


def test_settle_puts_the_study_back_to_one_file_unless_another_connection_holds_it(tmp_path, caplog):
    import logging

    from sweeper.search.study_db import settle

    caplog.set_level(logging.INFO, logger="sweeper.search.study_db")
    db = tmp_path / "study.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("pragma journal_mode=wal")
        con.execute("create table t (x)")
        con.commit()
    other = sqlite3.connect(db)
    other.execute("select count(*) from t").fetchone()  # a dashboard's open connection
    settle(None, db)
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert "kept in WAL" in caplog.text
    other.close()
    settle(None, db)
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("pragma journal_mode").fetchone()[0] == "delete"
    assert not (tmp_path / "study.db-wal").exists()
