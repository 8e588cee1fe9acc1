"""A resume's options: a shipped space by name, the recorded options reused unless given, a change that cannot
alter results allowed and recorded, and a refused space named by file and first differing key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_dataset


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """A finished 2-trial sweep of the shipped smoke space started with --max-concurrent 1 (the space says 2)."""
    tmp = tmp_path_factory.mktemp("smoke")
    data = make_dataset(tmp / "data", train=2, val=1)
    args = [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(data), "--backbone", "random_vits14",
            "--space", "smoke", "--trials", "2", "--max-concurrent", "1", "--name", "sw", "--out",
            str(tmp / "results"), "--cache-dir", str(tmp / "cache")]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return args, tmp / "results" / "sw"


def resume_copy(smoke_sweep, tmp_path: Path, *drop: str) -> tuple[list[str], Path]:
    """The sweep's folder copied under tmp_path and a resume command line for it, without the options `drop`
    (each with its value)."""
    args, run_dir = smoke_sweep
    copy = tmp_path / "results" / "sw"
    shutil.copytree(run_dir, copy)
    args = list(args)
    args[args.index("--out") + 1] = str(tmp_path / "results")
    for option in drop:
        i = args.index(option)
        del args[i:i + 2]
    return args + ["--resume"], copy


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def options(run_dir: Path) -> tuple[dict, dict]:
    info = json.loads((run_dir / "sweep.json").read_text())
    return info["options"], info["started_with"]


@pytest.mark.slow  # starts a Ray sweep
def test_resume_with_a_shipped_space_by_name(smoke_sweep, tmp_path):
    args, copy = resume_copy(smoke_sweep, tmp_path)  # --space smoke, as the sweep was started
    proc = run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # starts a Ray sweep
def test_resume_keeps_the_recorded_concurrency_and_allows_changing_it(smoke_sweep, tmp_path):
    args, copy = resume_copy(smoke_sweep, tmp_path, "--max-concurrent", "--space", "--trials")
    proc = run(args)  # no --max-concurrent: the recorded 1, not the space's 2
    assert proc.returncode == 0, proc.stderr[-3000:]
    opts, started = options(copy)
    assert opts["max_concurrent"] == 1 and started["max_concurrent"] == 1
    proc = run(args + ["--max-concurrent", "1"])  # the recorded value given explicitly
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(args + ["--max-concurrent", "2", "--cpus-per-trial", "2"])  # cannot alter results: allowed
    assert proc.returncode == 0, proc.stderr[-3000:]
    opts, started = options(copy)
    assert opts["max_concurrent"] == 2 and opts["cpus_per_trial"] == 2
    proc = run(args)  # and the next resume uses what was recorded last
    assert proc.returncode == 0, proc.stderr[-3000:]
    opts, _ = options(copy)
    assert opts["max_concurrent"] == 2 and opts["cpus_per_trial"] == 2


@pytest.mark.slow  # starts a Ray sweep
def test_resume_with_another_space_names_both_files_and_the_first_key_that_differs(smoke_sweep, tmp_path):
    args, copy = resume_copy(smoke_sweep, tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text((ROOT / "search_spaces" / "smoke.yaml").read_text().replace("high: 1.0e-2", "high: 1.0e-1"))
    args[args.index("--space") + 1] = str(other)
    before = (copy / "sweep.json").read_bytes()
    proc = run(args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1, proc.stderr
    line = line[0]
    assert str(other) in line and str(copy / "space.yaml") in line and "smoke.yaml" in line
    assert "params.lr.high" in line and "sha256" not in line
    assert (copy / "sweep.json").read_bytes() == before
