"""Faults a real user meets: two processes on one run folder, a resume with other inputs, a corrupt cache,
resources that do not exist. Each must be one line and exit 2, and lose or mix nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sweeper.cli import main
from sweeper.errors import SweeperError

from conftest import make_dataset

ROOT = Path(__file__).resolve().parent.parent

SPACE = """
metric: val_iou
mode: max
trials: 2
max_concurrent: 1
asha: {max_epochs: 1, grace_period: 1, reduction_factor: 2}
fixed: {epochs: 1, train_metrics: false, image_height: 28, image_width: 56}
params:
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
"""


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


@pytest.fixture
def holder(tmp_path):
    """Start a second process that owns a run folder's lock until it is killed."""
    procs = []

    def start(run_dir: Path) -> subprocess.Popen:
        run_dir.mkdir(parents=True, exist_ok=True)
        code = textwrap.dedent(f"""
            import sys, time
            from sweeper.runs import run_lock
            with run_lock({str(run_dir)!r}, "sweeper search --name twin"):
                print("locked", flush=True)
                time.sleep(120)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for p in procs:
        p.kill()
        p.wait()


# --------------------------------------------------------------------------- a run folder has one owner


def test_run_lock_names_the_owner_and_is_released(tmp_path):
    from sweeper.runs import LOCK_FILE, run_lock

    with run_lock(tmp_path, "sweeper search --name a") as lock:
        owner = json.loads(lock.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(SweeperError, match=rf"in use by sweeper search --name a \(pid {os.getpid()} on "):
            with run_lock(tmp_path, "sweeper search --name b"):
                pass
        assert json.loads(lock.read_text()) == owner  # the refused second owner left the lock alone
    assert not (tmp_path / LOCK_FILE).exists()


def test_run_lock_is_released_when_the_body_fails(tmp_path):
    from sweeper.runs import LOCK_FILE, run_lock

    with pytest.raises(RuntimeError):
        with run_lock(tmp_path, "x"):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    from sweeper.runs import LOCK_FILE, run_lock

    pid = dead_pid()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "old"}))
    with caplog.at_level("WARNING", logger="sweeper"):
        with run_lock(tmp_path, "new") as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"pid {pid}" in caplog.text and "no longer running" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing left behind: neither lock nor the moved-aside stale one


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    from sweeper.runs import LOCK_FILE, run_lock

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "host": "elsewhere", "command": "old"}))
    with pytest.raises(SweeperError, match="on elsewhere"):
        with run_lock(tmp_path, "new"):
            pass


def test_second_search_on_a_folder_in_use_names_the_owner_and_exits_2(tmp_path, capsys, holder):
    run_dir = tmp_path / "results" / "twin"
    proc = holder(run_dir)
    for extra in ([], ["--resume"]):
        code, _, err = run_cli(capsys, "search", "--name", "twin", "--out", tmp_path / "results",
                               "--space", ROOT / "search_spaces" / "smoke.yaml", *extra)
        assert code == 2
        assert f"in use by sweeper search --name twin (pid {proc.pid} on {socket.gethostname()}" in error_line(err)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # the refused run wrote nothing


def test_baseline_and_confirm_on_a_folder_in_use_exit_2(tmp_path, capsys, holder):
    out = tmp_path / "base"
    proc = holder(out)
    code, _, err = run_cli(capsys, "baseline", "--out", out, "--cache-dir", tmp_path / "cache",
                           "--data", make_dataset(tmp_path / "data"), "--backbone", "random_vits14")
    assert code == 2 and f"pid {proc.pid}" in error_line(err)
    (out / "sweep.json").write_text("{}")
    code, _, err = run_cli(capsys, "confirm", out)
    assert code == 2 and f"pid {proc.pid}" in error_line(err)


def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, "search", "--name", "nodata", "--out", tmp_path / "results",
                           "--data", tmp_path / "missing", "--space", ROOT / "search_spaces" / "smoke.yaml")
    assert code == 2 and "missing" in error_line(err)
    assert not (tmp_path / "results" / "nodata").exists()


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_refused(tmp_path, capsys, name):
    code, _, err = run_cli(capsys, "search", "--name", name, "--out", tmp_path / "results")
    assert code == 2 and "--name" in error_line(err)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


# --------------------------------------------------------------------------- baseline --out of an existing run


def test_baseline_refuses_to_overwrite_an_existing_run_unless_asked(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", train=2, val=1)
    out = tmp_path / "run"
    args = ["-q", "baseline", "--data", data, "--backbone", "random_vits14", "--epochs", "1", "--out", out,
            "--cache-dir", tmp_path / "cache"]
    assert run_cli(capsys, *args)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and f"{out}" in error_line(err) and "--overwrite" in error_line(err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    code, _, err = run_cli(capsys, *args, "--overwrite")
    assert code == 0, err
    assert not (out / ".lock").exists()
