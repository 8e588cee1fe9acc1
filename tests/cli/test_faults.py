"""Faults a real user meets: two processes on one run folder, a resume with other inputs, a corrupt cache,
resources that do not exist. Each must be one line and exit 2, and lose or mix nothing."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, error_line, make_dataset, run_cli

from sweeper.cli.main import main
from sweeper.errors import SweeperError

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


@pytest.fixture(autouse=True)
def sweeper_logs_reach_caplog(monkeypatch):
    """The CLI stops the 'sweeper' logger propagating to the root (where caplog listens); undo that here."""
    import logging

    monkeypatch.setattr(logging.getLogger("sweeper"), "propagate", True)


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
            from sweeper.rundir.lock import run_lock
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
    from sweeper.rundir.layout import LOCK_FILE
    from sweeper.rundir.lock import run_lock

    with run_lock(tmp_path, "sweeper search --name a") as lock:
        owner = json.loads(lock.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(SweeperError, match=rf"in use by sweeper search --name a \(pid {os.getpid()} on "):
            with run_lock(tmp_path, "sweeper search --name b"):
                pass
        assert json.loads(lock.read_text()) == owner  # the refused second owner left the lock alone
    assert not (tmp_path / LOCK_FILE).exists()


def test_run_lock_is_released_when_the_body_fails(tmp_path):
    from sweeper.rundir.layout import LOCK_FILE
    from sweeper.rundir.lock import run_lock

    with pytest.raises(RuntimeError):
        with run_lock(tmp_path, "x"):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    from sweeper.rundir.layout import LOCK_FILE
    from sweeper.rundir.lock import run_lock

    pid = dead_pid()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "old"}))
    with caplog.at_level("WARNING", logger="sweeper"):
        with run_lock(tmp_path, "new") as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"pid {pid}" in caplog.text and "no longer running" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing left behind: neither lock nor the moved-aside stale one


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    from sweeper.rundir.layout import LOCK_FILE
    from sweeper.rundir.lock import run_lock

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


@pytest.mark.slow  # starts a Ray sweep or trains
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


# --------------------------------------------------------------------------- a resume uses what the sweep started with


def search_args(data: Path, space: Path, out: Path, cache: Path, name: str = "sw") -> list[str]:
    return [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(data), "--backbone", "random_vits14",
            "--space", str(space), "--name", name, "--out", str(out), "--cache-dir", str(cache)]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A finished two-trial sweep (one epoch each, 28x56 px): (its command line, data, space, run folder)."""
    tmp = tmp_path_factory.mktemp("sweep")
    data = make_dataset(tmp / "data", train=2, val=1)
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    args = search_args(data, space, tmp / "results", tmp / "cache")
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return args, data, space, tmp / "results" / "sw"


def copy_run(finished_sweep, tmp_path) -> tuple[list[str], Path]:
    """The finished sweep's folder copied under tmp_path, and a resume command line for the copy."""
    import shutil

    args, *_, run_dir = finished_sweep
    copy = tmp_path / "results" / "sw"
    shutil.copytree(run_dir, copy)
    args = list(args)
    args[args.index("--out") + 1] = str(tmp_path / "results")
    return args + ["--resume"], copy


def resume_refused(args: list[str], run_dir: Path) -> str:
    """Run a resume that must be refused; return its error line after checking nothing was touched."""
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # sweep.json still names the original data; no lock, no trial, nothing new
    return error_line(proc.stderr)


@pytest.mark.slow  # starts a Ray sweep or trains
@pytest.mark.parametrize("option, field", [
    (["--trials", "5"], "trials = 5"), (["--seed", "3"], "seed = 3"),  # --max-concurrent may change: test_resume_options
    (["--label-mode", "nearest"], "label_mode = 'nearest'"), (["--amp"], "amp = True"),
    (["--cache-dtype", "OTHER"], "cache_dtype = 'OTHER'"), (["--allow-unknown-ids"], "allow_unknown_ids"),
    (["--backbone", "dinov2_vits14"], "backbone = 'dinov2_vits14'"),
])
def test_resume_refuses_an_option_it_cannot_honour(finished_sweep, tmp_path, option, field):
    args, run_dir = copy_run(finished_sweep, tmp_path)
    if "OTHER" in option:  # the cache dtype the sweep did not use (the default may change)
        other = {"float32": "float16", "float16": "float32"}[json.loads((run_dir / "sweep.json").read_text())
                                                            ["started_with"]["cache_dtype"]]
        option, field = [other if o == "OTHER" else o for o in option], field.replace("OTHER", other)
    line = resume_refused(args + option, run_dir)
    assert f"cannot resume with {field}" in line and "the sweep was started with" in line


@pytest.mark.slow  # starts a Ray sweep or trains
def test_resume_with_other_data_is_refused(finished_sweep, tmp_path):
    args, run_dir = copy_run(finished_sweep, tmp_path)
    other = make_dataset(tmp_path / "other", train=2, val=1)
    args[args.index("--data") + 1] = str(other)
    assert f"cannot resume with data_root = '{other.resolve()}'" in resume_refused(args, run_dir)


@pytest.mark.slow  # starts a Ray sweep or trains
def test_resume_after_the_data_changed_in_place_is_refused(tmp_path):
    data = make_dataset(tmp_path / "data", train=2, val=1)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("trials: 2", "trials: 1"))
    args = search_args(data, space, tmp_path / "results", tmp_path / "cache")
    assert subprocess.run(args, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    from conftest import write_pair

    write_pair(data / "val", "0000.png", size=(96, 54), seed=999)  # another val image, same name
    assert "cannot resume with data_fingerprint" in resume_refused(args + ["--resume"], tmp_path / "results" / "sw")


@pytest.mark.slow  # starts a Ray sweep or trains
def test_resume_with_another_space_is_refused(finished_sweep, tmp_path):
    args, run_dir = copy_run(finished_sweep, tmp_path)
    other = tmp_path / "space.yaml"
    other.write_text(SPACE.replace("high: 1.0e-2", "high: 1.0e-1"))
    args[args.index("--space") + 1] = str(other)
    assert "cannot resume with space = " in resume_refused(args, run_dir)


@pytest.mark.slow  # starts a Ray sweep or trains
def test_resume_with_an_edited_space_copy_or_other_weights_is_refused(finished_sweep, tmp_path):
    args, run_dir = copy_run(finished_sweep, tmp_path)
    copy = run_dir / "space.yaml"
    original = copy.read_text()
    copy.write_text(original.replace("image_height: 28", "image_height: 42"))
    assert "cannot resume with space = " in resume_refused(args, run_dir)
    copy.write_text(original)
    info = json.loads((run_dir / "sweep.json").read_text())
    info["started_with"]["weights_digest"] = "0" * 16  # as if the weights file changed under the same path
    (run_dir / "sweep.json").write_text(json.dumps(info))
    assert "cannot resume with weights_digest = " in resume_refused(args, run_dir)


@pytest.mark.slow  # starts a Ray sweep or trains
def test_resume_with_the_same_options_still_works(finished_sweep):
    import pandas as pd

    args, *_, run_dir = finished_sweep
    before = json.loads((run_dir / "sweep.json").read_text())["started_with"]
    proc = subprocess.run(args + ["--resume", "--trials", "2", "--seed", "0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "sweep.json").read_text())["started_with"] == before
    assert len(pd.read_csv(run_dir / "trials.csv")) == 2


# --------------------------------------------------------------------------- a corrupt feature cache is rebuilt


def build_cache(tmp_path: Path):
    """The token and label cache entries of a tiny train split, built once; (split, backbone, paths)."""
    from sweeper.data.cache import cached_labels, cached_tokens
    from sweeper.data.dataset import find_split
    from sweeper.model.backbone import create_backbone
    from sweeper.training.config import LabelMode

    split = find_split(make_dataset(tmp_path / "data", train=2, val=1), "train")
    backbone = create_backbone("random_vits14")
    cache = tmp_path / "cache"
    tokens, hit = cached_tokens(split, backbone, cache_root=cache, height=28, width=56, show_progress=False)
    labels = cached_labels(split, cache_root=cache, height=28, width=56, mode=LabelMode.PHASE1)
    assert not hit
    token_file = next((cache / "tokens").glob("*.npy"))
    label_file = next((cache / "labels").glob("*.npy"))
    return split, backbone, cache, np_copy(tokens), np_copy(labels), token_file, label_file


def np_copy(a):
    import numpy as np

    return np.array(a)


def corrupt(path: Path, how: str) -> None:
    import numpy as np

    raw = path.read_bytes()
    if how == "zeros":  # same size, header intact: loads fine, trains on garbage
        header = len(raw) - np.load(path, mmap_mode="r").nbytes
        path.write_bytes(raw[:header] + bytes(len(raw) - header))
    elif how == "flip":  # one byte in the middle
        i = len(raw) // 2
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "garbage":  # not an .npy at all
        path.write_bytes(os.urandom(len(raw)))
    elif how == "header":
        path.write_bytes(raw[:20])
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["zeros", "flip", "truncated", "garbage", "header"])
def test_a_corrupt_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog, how):
    import numpy as np

    from sweeper.data.cache import cached_labels, cached_tokens
    from sweeper.training.config import LabelMode

    split, backbone, cache, tokens, labels, token_file, label_file = build_cache(tmp_path)
    for path in (token_file, label_file):
        corrupt(path, how)
    with caplog.at_level("WARNING", logger="sweeper"):
        again, hit = cached_tokens(split, backbone, cache_root=cache, height=28, width=56, show_progress=False)
        again_labels = cached_labels(split, cache_root=cache, height=28, width=56, mode=LabelMode.PHASE1)
    assert not hit  # rebuilt, not read
    np.testing.assert_array_equal(np.asarray(again), tokens)
    np.testing.assert_array_equal(again_labels, labels)
    assert caplog.text.count("rebuilding it") == 2 and str(token_file) in caplog.text
    caplog.clear()
    _, hit = cached_tokens(split, backbone, cache_root=cache, height=28, width=56, show_progress=False)
    assert hit and "rebuilding" not in caplog.text  # the rebuilt entry verifies


def test_an_intact_cache_entry_is_a_hit_without_warnings(tmp_path, caplog):
    from sweeper.data.cache import cached_tokens

    split, backbone, cache, tokens, *_ = build_cache(tmp_path)
    caplog.clear()  # the untrained backbone's warning
    with caplog.at_level("WARNING", logger="sweeper"):
        again, hit = cached_tokens(split, backbone, cache_root=cache, height=28, width=56, show_progress=False)
    assert hit and not caplog.text


def test_a_corrupt_entry_that_cannot_be_rebuilt_is_one_line(tmp_path, monkeypatch):
    import errno

    import numpy as np

    from sweeper.data.cache import cached_tokens

    split, backbone, cache, tokens, labels, token_file, label_file = build_cache(tmp_path)
    corrupt(token_file, "zeros")

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np.lib.format, "open_memmap", full_disk)
    with pytest.raises(SweeperError, match=f"{token_file.parent}.*cannot write.*No space left on device"):
        cached_tokens(split, backbone, cache_root=cache, height=28, width=56, show_progress=False)
    assert not list((cache / "tokens").glob("*.partial-*"))


# --------------------------------------------------------------------------- resources that do not exist: errors, not hangs


def search_cli(tmp_path: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`sweeper search` on a tiny set in a subprocess that may not hang: killed after `timeout` s."""
    data = tmp_path / "data" if (tmp_path / "data").is_dir() else make_dataset(tmp_path / "data", train=2, val=1)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return subprocess.run(search_args(data, space, tmp_path / "results", tmp_path / "cache") + list(extra),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_missing_resources_names_what_the_cluster_has():
    from sweeper.search.ray_local import missing_resources

    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 4.0}]
    assert missing_resources(1, 0.25, nodes) is None and missing_resources(8, 1, nodes) is None
    msg = missing_resources(2, 2, nodes)
    assert "2 GPUs" in msg and "12 CPUs and 1 GPU in all" in msg and "largest node: 8 CPUs, 1 GPU" in msg
    assert "9 CPUs" in missing_resources(9, 0, nodes)
    assert "no GPU" in missing_resources(1, 0.3, [{"CPU": 2.0}])


@pytest.mark.parametrize("option, expected", [
    (["--cpus-per-trial", "99"], "--cpus-per-trial 99"), (["--gpus-per-trial", "0.3"], "--gpus-per-trial 0.3"),
    (["--gpus-per-trial", "2"], "--gpus-per-trial 2"),
])
def test_resources_the_machine_lacks_are_one_line_not_a_hang(tmp_path, option, expected):
    import torch

    if option[0] == "--gpus-per-trial" and torch.cuda.device_count() >= float(option[1]):
        pytest.skip("this machine has the GPUs")
    started = time.time()
    proc = search_cli(tmp_path, *option)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = error_line(proc.stderr)
    assert expected in line and f"{os.cpu_count()} CPU" in line, line
    assert time.time() - started < 120
    assert not (tmp_path / "results" / "sw").exists()  # a failed start leaves no run folder


def test_cpus_per_trial_zero_is_one_line(tmp_path):
    proc = search_cli(tmp_path, "--cpus-per-trial", "0", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--cpus-per-trial" in proc.stderr.strip().splitlines()[-1]


def test_an_address_where_no_cluster_answers_times_out_in_one_line(tmp_path):
    started = time.time()
    proc = search_cli(tmp_path, "--address", "127.0.0.1:1", timeout=90)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "127.0.0.1:1" in error_line(proc.stderr) and time.time() - started < 90
    assert not (tmp_path / "results" / "sw").exists()


def test_trial_resources_come_from_the_cluster_not_the_driver():
    from sweeper.search.ray_local import trial_resources

    head, gpu_worker = {"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}
    # a CPU-only head (the driver's machine) with two one-GPU workers: trials get GPU shares
    assert trial_resources([head, gpu_worker, gpu_worker], device="auto", gpus_per_trial=None,
                           max_concurrent=None, default_concurrent=2) == (0.25, 8)
    assert trial_resources([head], device="auto", gpus_per_trial=None, max_concurrent=None,
                           default_concurrent=2) == (0.0, 2)  # no GPU anywhere: the space's concurrency
    assert trial_resources([gpu_worker], device="auto", gpus_per_trial=1 / 3, max_concurrent=None,
                           default_concurrent=2) == (1 / 3, 3)
    assert trial_resources([gpu_worker, gpu_worker], device="auto", gpus_per_trial=0.4, max_concurrent=None,
                           default_concurrent=2) == (0.4, 4)  # 2 per GPU: a share does not span two GPUs
    assert trial_resources([gpu_worker], device="auto", gpus_per_trial=None, max_concurrent=1,
                           default_concurrent=2) == (0.25, 1)  # --max-concurrent as given
    # --device cpu: no GPU share by default; an explicit share would hold a GPU the trial does not use
    assert trial_resources([gpu_worker], device="cpu", gpus_per_trial=None, max_concurrent=None,
                           default_concurrent=2) == (0.0, 2)
    with pytest.raises(SweeperError, match=r"^--device cpu with --gpus-per-trial 0.25: .*--gpus-per-trial 0"):
        trial_resources([gpu_worker], device="cpu", gpus_per_trial=0.25, max_concurrent=None, default_concurrent=2)
    with pytest.raises(SweeperError, match=r"^--device cuda .*--gpus-per-trial 0"):
        trial_resources([gpu_worker], device="cuda", gpus_per_trial=0.0, max_concurrent=None, default_concurrent=2)


def test_device_cpu_reaches_the_trials(tmp_path):
    # the trials decide their device inside Ray: --device must travel in their config, or a trial granted a
    # GPU trains there whatever the user asked for
    from sweeper.cli.search import trial_overrides

    args = argparse.Namespace(device="cpu", label_mode=None, amp=False, gpu_memory=None)
    assert trial_overrides(args)["device"] == "cpu"
    args = argparse.Namespace(device="auto", label_mode="nearest", amp=True, gpu_memory=6.0)
    assert trial_overrides(args) == {"device": "auto", "label_mode": "nearest", "amp": True, "gpu_memory_gib": 6.0}


def test_device_cpu_with_a_gpu_share_is_refused_before_any_work(tmp_path):
    proc = search_cli(tmp_path, "--device", "cpu", "--gpus-per-trial", "0.25", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_line(proc.stderr).startswith("error: --device cpu with --gpus-per-trial 0.25")
    assert not (tmp_path / "results" / "sw").exists()


def test_search_on_cuda_without_cuda_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = search_cli(tmp_path, "--device", "cuda", timeout=120)
    assert proc.returncode == 2 and "CUDA" in error_line(proc.stderr)


# --------------------------------------------------------------------------- smaller: Ctrl-C, progress counts, synth


def test_progress_counts_the_trials_asked_for_not_the_space_default():
    from sweeper.search.progress import ProgressPrinter
    from sweeper.search.space import load_space

    space = load_space(ROOT / "search_spaces" / "smoke.yaml")
    assert space.trials == 3
    assert ProgressPrinter(space, total=6)._counts([]).endswith("| of 6")


@pytest.mark.slow  # starts a Ray sweep or trains
def test_ctrl_c_on_search_exits_130_and_prints_the_resume_command(tmp_path):
    import signal

    data = make_dataset(tmp_path / "data", train=4, val=1)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("trials: 2", "trials: 3").replace("max_epochs: 1", "max_epochs: 3")
                     .replace("epochs: 1,", "epochs: 3,"))
    args = search_args(data, space, tmp_path / "results", tmp_path / "cache")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    exp = tmp_path / "results" / "sw" / "ray"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(p.stat().st_size for p in exp.glob("trial_main_*/result.json")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert f"sweeper search --resume --name sw --out {tmp_path / 'results'}" in err
    assert "WARNING" not in err and "Tuner.restore" not in err, err[-3000:]  # Ray's own stop notice and advice
    assert not (tmp_path / "results" / "sw" / ".lock").exists()


def test_sigterm_before_the_sweep_started_says_the_same_command_starts_it(tmp_path, capsys, monkeypatch):
    """SIGTERM while the inputs are prepared (the cache builds): nothing ran, so the message says how to start
    again, and the same command then does (the folder is not left behind to refuse it)."""
    import signal

    import sweeper.cli.search as search

    data = make_dataset(tmp_path / "data", train=2, val=1)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    argv = search_args(data, space, tmp_path / "results", tmp_path / "cache")[3:]

    def terminated(*a, **kw):  # a real SIGTERM to this process, as `timeout` or Slurm sends it
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(500):  # Python runs the handlers between bytecodes: short sleeps give it the chance
            time.sleep(0.01)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(search, "prepare", terminated)
    # SIGTERM is handled as Ctrl-C (SIGINT), so SIGINT gets Python's own handler, as in a fresh `sweeper` process:
    # an earlier in-process test can leave another one installed (this test failed at that point of two full
    # .ci/run runs and passed alone)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, _, err = run_cli(capsys, *argv)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 143
    cmd = f"sweeper search --name sw --out {tmp_path / 'results'}"
    assert err.strip().splitlines()[-1] == (f"terminated (SIGTERM) before the sweep started: nothing ran; "
                                            f"the same command starts it: {cmd}"), err
    assert not (tmp_path / "results" / "sw").exists()


def test_synth_with_no_train_images_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["synth", str(tmp_path / "set"), "--train", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == "error: --train: expected a whole number >= 1, got 0; see sweeper synth -h\n"
    assert not (tmp_path / "set").exists()


def test_summary_md_shows_user_strings_as_text_not_markup():
    from sweeper.report import summary

    evil = "run_1 <img src=x onerror=alert(1)> [link](http://x) | cell\n# heading"
    md = "\n".join(summary._md(f"Sweep report: {evil}", None, [("Data", evil)], [evil]))
    import re

    assert not re.search(r"(?<!\\)[<>\[\]|]", md) and "\n# heading" not in md  # each one escaped
    assert "run\\_1 \\<img src=x onerror=alert(1)\\> \\[link\\](http://x) \\| cell \\# heading" in md
    table = summary._md_table(["error"], [[evil]])
    assert table.splitlines()[-1].count(" | ") == 0  # one cell: the pipe inside it is escaped


# --------------------------------------------------------------------------- damaged inputs are one line


def rgb_mask_dataset(tmp_path: Path) -> Path:
    """A tiny set whose first train mask is an 8-bit RGB picture (a coloured mask) instead of raw ids."""
    import numpy as np
    from PIL import Image

    data = make_dataset(tmp_path / "data", train=2, val=1, size=(56, 28))
    rgb = np.zeros((28, 56, 3), np.uint8)
    rgb[:, :, 0] = 100  # every pixel (100, 0, 0): its red value is even a known raw id
    Image.fromarray(rgb, "RGB").save(data / "train" / "Segmentation" / "0000.png")
    return data


@pytest.mark.parametrize("allow_unknown", [False, True])
def test_an_rgb_mask_is_one_line_naming_the_file(tmp_path, allow_unknown):
    from sweeper.data.dataset import find_split, load_raw_mask, load_split_labels
    from sweeper.training.config import LabelMode

    data = rgb_mask_dataset(tmp_path)
    mask = data / "train" / "Segmentation" / "0000.png"
    with pytest.raises(SweeperError, match=r"0000\.png: mask is RGB") as e:
        load_split_labels(find_split(data, "train"), height=28, width=56, mode=LabelMode.PHASE1,
                          allow_unknown=allow_unknown)
    assert "\n" not in str(e.value) and str(mask) in str(e.value)
    with pytest.raises(SweeperError, match="mask is RGB"):  # never 3 values per pixel counted as pixels
        load_raw_mask(mask)


@pytest.mark.parametrize("allow_unknown", [False, True])
def test_baseline_on_an_rgb_mask_exits_2_and_leaves_no_folder(tmp_path, capsys, monkeypatch, allow_unknown):
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    data = rgb_mask_dataset(tmp_path)
    code, _, err = run_cli(capsys, "baseline", "--epochs", "1", "--data", data, "--backbone", "random_vits14",
                           "--out", tmp_path / "run", *(["--allow-unknown-ids"] if allow_unknown else []))
    assert code == 2 and "0000.png: mask is RGB" in error_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("under", ["file", "below-file"])
def test_a_cache_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys, monkeypatch, under):
    # root may write anywhere, so a path that is, or is under, a plain file stands in for a read-only folder
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    monkeypatch.setenv("SWEEPER_CACHE", str(blocker if under == "file" else blocker / "cache"))
    data = make_dataset(tmp_path / "data", train=2, val=1, size=(56, 28))
    for argv in (["--data", data, "--backbone", "random_vits14"], []):  # given data, and the embedded set
        code, _, err = run_cli(capsys, "baseline", "--epochs", "1", *argv, "--out", tmp_path / "run")
        assert code == 2 and str(blocker) in error_line(err), err
        assert not (tmp_path / "run").exists()
    assert blocker.read_text() == "x"


GARBAGE = b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8  # binary: a gzip header, then every byte value


def damaged_sweep(tmp_path: Path, name: str, how: str) -> Path:
    """The hand-made sweep of test_report with one file replaced by binary garbage or cut in half."""
    from test_report import make_sweep

    run = make_sweep(tmp_path)
    path = run / name
    if how == "garbage":
        path.write_bytes(GARBAGE)
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return run


@pytest.mark.parametrize("name, how", [("trials.csv", "garbage"), ("history.csv", "garbage"),
                                       ("study.db", "garbage"), ("trials.csv", "truncated"),
                                       ("history.csv", "truncated")])
def test_report_on_a_damaged_file_is_one_line_naming_it(tmp_path, capsys, name, how):
    run = damaged_sweep(tmp_path, name, how)
    code, out, err = run_cli(capsys, "report", run)
    assert code == 2 and f"{run / name}:" in error_line(err), err
    assert "never started" not in out + err
    assert not (run / "report").exists()


@pytest.mark.parametrize("name, how", [("trials.csv", "garbage"), ("trials.csv", "truncated"),
                                       ("history.csv", "garbage")])
def test_evaluate_on_a_damaged_table_is_one_line_naming_it(tmp_path, capsys, monkeypatch, name, how):
    import test_evaluate

    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    run = test_evaluate.make_sweep(tmp_path / "sweep")
    path = run / name
    if how == "garbage":
        path.write_bytes(GARBAGE)
    else:
        path.write_bytes(path.read_bytes()[:-12])
    data = make_dataset(tmp_path / "test", train=1, val=1, size=(56, 28)) / "val"
    # trial 1's score comes from history.csv, so that file is read too
    code, _, err = run_cli(capsys, "evaluate", run, "--data", data, "--trial", "1")
    assert code == 2 and f"{path}:" in error_line(err), err


def test_dashboard_without_its_packages_is_one_line_and_leaves_no_folder(tmp_path):
    # Ray here may or may not have the dashboard's packages (ray[default]): make it lack them either way
    data = make_dataset(tmp_path / "data", train=2, val=1)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    argv = search_args(data, space, tmp_path / "results", tmp_path / "cache")[3:] + ["--dashboard"]
    code = textwrap.dedent(f"""
        import sys
        import ray._private.utils as utils
        utils.get_dashboard_dependency_error = lambda: ImportError("No module named 'aiohttp'")
        from sweeper.cli.main import main
        sys.exit(main({argv!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert "--dashboard" in line and "aiohttp" in line and "ray[default]" in line, line
    assert not (tmp_path / "results" / "sw").exists()
    assert not (tmp_path / "cache").exists()  # refused before any work


# --------------------------------------------------------------------------- a full disk


class FullDisk:
    """Stands in for `open` in sweeper.files: files whose name contains `target` take `room` bytes, then fail
    with ENOSPC, as a write on a full disk does (the partial bytes stay in the file)."""

    def __init__(self, target: str, room: int = 10):
        self.target, self.room, self.hits = target, room, 0

    def __call__(self, file, mode="r", *args, **kw):
        import builtins
        import errno

        f = builtins.open(file, mode, *args, **kw)
        if self.target not in Path(file).name or not any(c in mode for c in "wa"):
            return f
        self.hits += 1
        full = self

        class Writer:
            def __init__(self):
                self.left = full.room

            def write(self, data):
                n = min(len(data), self.left)
                f.write(data[:n])
                self.left -= n
                if n < len(data):
                    f.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return len(data)

            def __getattr__(self, name):
                return getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

        return Writer()


def no_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or ".partial-" in p.name]


@pytest.mark.parametrize("target", ["index.html", "summary.md", ".png"])
def test_report_on_a_full_disk_is_one_line_and_keeps_the_earlier_report(tmp_path, capsys, monkeypatch, target):
    from test_report import make_sweep

    import sweeper.files

    run = make_sweep(tmp_path)
    assert run_cli(capsys, "report", run)[0] == 0
    before = {p: p.read_bytes() for p in (run / "report").iterdir()}
    full = FullDisk(target)
    monkeypatch.setattr(sweeper.files, "open", full, raising=False)
    code, _, err = run_cli(capsys, "report", run)
    assert full.hits and code == 2, err
    line = error_line(err)
    assert str(run / "report") in line and target in line and "No space left on device" in line, line
    assert no_temporaries(run) == []
    assert {p: p.read_bytes() for p in (run / "report").iterdir()} == before  # the earlier report, intact


@pytest.mark.parametrize("target", ["segmentation_head.pth", "metrics.jsonl"])
def test_baseline_on_a_full_disk_is_one_line_and_keeps_finished_epochs(tmp_path, capsys, monkeypatch, target):
    import sweeper.files
    from sweeper.files import read_jsonl

    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", train=2, val=1, size=(56, 28))
    argv = ["baseline", "--epochs", "2", "--data", data, "--backbone", "random_vits14", "--out", tmp_path / "run"]
    full = FullDisk(target, room=10 if target.endswith(".pth") else 0)
    if target == "metrics.jsonl":  # the disk fills during epoch 2: epoch 1's line is written
        real = full.__call__
        calls = []

        def second_on(file, mode="r", *a, **kw):
            if target in Path(file).name:
                calls.append(file)
            return real(file, mode, *a, **kw) if len(calls) > 1 else open(file, mode, *a, **kw)

        monkeypatch.setattr(sweeper.files, "open", second_on, raising=False)
    else:
        monkeypatch.setattr(sweeper.files, "open", full, raising=False)
    code, _, err = run_cli(capsys, *argv)
    assert full.hits and code == 2, err
    line = error_line(err)
    assert str(tmp_path / "run" / target) in line and "No space left on device" in line, line
    assert no_temporaries(tmp_path / "run") == []
    epochs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in epochs] == ([1, 2] if target.endswith(".pth") else [1])
    assert (tmp_path / "run" / "metrics.jsonl").read_text().endswith("\n")  # no torn line left behind


@pytest.mark.parametrize("target", ["trials.csv", "history.csv"])
def test_search_tables_on_a_full_disk_are_one_line_and_keep_the_earlier_tables(tmp_path, monkeypatch, target):
    import pandas as pd

    import sweeper.files
    import sweeper.search.tables

    old = {"trials.csv": "trial,best_val_iou\n0,0.1\n", "history.csv": "trial,epoch\n0,1\n"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    new = pd.DataFrame({"trial": [0, 1], "best_val_iou": [0.1, 0.2], "epoch": [1, 1]})
    monkeypatch.setattr(sweeper.search.tables, "collect", lambda run_dir, space: (new, new))
    monkeypatch.setattr(sweeper.files, "open", FullDisk(target), raising=False)
    with pytest.raises(SweeperError, match=rf"{tmp_path / target}: .*No space left on device") as e:
        sweeper.search.tables.write_tables(tmp_path, space=None)
    assert "\n" not in str(e.value)
    assert no_temporaries(tmp_path) == []
    assert (tmp_path / target).read_text() == old[target]


# --------------------------------------------------------------------------- smaller: what is skipped is said


def test_skipped_files_are_warned_about_once_with_their_count(tmp_path, caplog):
    from PIL import Image

    from sweeper.data.dataset import find_split

    data = make_dataset(tmp_path / "data", train=3, val=1, size=(56, 28))
    train = data / "train"
    Image.open(train / "Color_Images" / "0000.png").convert("RGB").save(train / "Color_Images" / "extra.jpg")
    Image.open(train / "Color_Images" / "0001.png").convert("RGB").save(train / "Color_Images" / "more.JPG")
    (train / "Color_Images" / "0002.png").unlink()  # its mask stays: a mask without its image
    with caplog.at_level("WARNING", logger="sweeper"):
        split = find_split(data, "train")
    assert [p.name for p in split.image_paths] == ["0000.png", "0001.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "2 image file(s) that are not .png" in warnings[0] and "1 mask(s) without an image" in warnings[0]
    assert str(train) in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="sweeper"):
        find_split(data, "val")  # a clean split: no warning
    assert not caplog.records


def test_rays_trial_traceback_and_token_notice_do_not_reach_the_terminal(tmp_path, capsys, caplog):
    import logging

    run_cli(capsys, "report", tmp_path / "nothing")  # any command sets up the CLI's logging
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    with caplog.at_level("WARNING"):
        try:
            raise RuntimeError("training loss became nan")
        except RuntimeError as e:
            controller.error("Trial task failed for trial trial_main_1", exc_info=e)  # details: the trial's error.txt
        auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        controller.error("Failed to restore the run state.")  # Ray's other errors still show
    assert [r.getMessage() for r in caplog.records] == ["Failed to restore the run state."]


# --------------------------------------------------------------------------- a local Ray dies with its driver


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


@pytest.mark.slow  # starts a local Ray
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_a_local_ray_does_not_outlive_a_killed_driver(tmp_path):
    import signal

    code = textwrap.dedent("""
        import time
        from pathlib import Path
        from sweeper.search.ray_local import start_ray
        from sweeper.search.driver import SearchOptions
        start_ray(SearchOptions(name="k", out_root=Path("."), trials=1, max_concurrent=1, gpus_per_trial=0,
                                cpus_per_trial=1, seed=0))
        time.sleep(3)  # the raylet's agents are up
        print("up", flush=True)
        time.sleep(300)
    """)
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert driver.stdout.readline().strip() == "up"
        ray_procs = descendants(driver.pid)
        assert len(ray_procs) >= 3, ray_procs  # gcs_server, raylet and its agents at least
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    deadline = time.time() + 20
    alive = ray_procs
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = {p for p in ray_procs if Path(f"/proc/{p}").exists()
                 and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}
    leftover = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:60] for p in alive if Path(f"/proc/{p}").exists()}
    for p in alive:  # clean up for the next test either way
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    assert not leftover, f"still running 20 s after the driver's kill -9: {leftover}"


def disk_full_chain() -> Exception:
    """The chain Ray Tune raised on a 4 MB tmpfs: a trial's checkpoint write, then the study update, failed."""
    import sqlite3

    try:
        try:
            try:
                raise OSError(28, "Error writing bytes to file. Detail: [errno 28] No space left on device")
            except OSError:
                raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as e:
            raise RuntimeError("An exception is raised during the commit.") from e
    except RuntimeError as e:
        return e


def test_a_full_disk_during_a_search_is_one_line_with_the_resume_command(tmp_path, monkeypatch):
    import ray.tune

    import sweeper.search.driver
    import sweeper.search.trial
    from sweeper.search.space import load_space

    class Tuner:
        def __init__(self, *a, **kw):
            pass

        def fit(self):
            raise disk_full_chain()

    monkeypatch.setattr(sweeper.search.driver, "start_ray", lambda *a, **kw: None)
    monkeypatch.setattr(sweeper.search.driver, "make_trainable", lambda *a, **kw: None)
    monkeypatch.setattr(sweeper.search.trial, "trial_arrays", lambda data: {})
    monkeypatch.setattr(ray.tune, "Tuner", Tuner)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    opts = sweeper.search.driver.SearchOptions(name="sw", out_root=tmp_path / "results", trials=2, max_concurrent=1,
                                      gpus_per_trial=0, cpus_per_trial=1, seed=0)
    with pytest.raises(SweeperError) as e:
        sweeper.search.driver.run_search(load_space(space_file), data=None, opts=opts, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'results' / 'sw'}: the disk is full"), msg
    assert f"sweeper search --resume --name sw --out {tmp_path / 'results'}" in msg


def test_other_errors_of_a_search_are_not_called_a_full_disk():
    from sweeper.search.ray_local import disk_full

    assert disk_full(disk_full_chain()) is not None
    assert disk_full(RuntimeError("training loss became nan")) is None
    assert disk_full(OSError(13, "Permission denied")) is None


def test_a_full_disk_under_torch_save_is_one_line(tmp_path):
    # torch.save reports a full disk as RuntimeError("... unexpected pos ...") raised while handling the OSError
    from sweeper.files import write_atomic

    def torch_like(f):
        f.write(b"partial")
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1280 vs 1174")

    (tmp_path / "head.pth").write_bytes(b"old")
    with pytest.raises(SweeperError, match=r"head\.pth: cannot write \(No space left on device\)"):
        write_atomic(tmp_path / "head.pth", torch_like)
    assert (tmp_path / "head.pth").read_bytes() == b"old" and no_temporaries(tmp_path) == []
    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not called a full disk, and still clean up
        write_atomic(tmp_path / "head.pth", lambda f: (_ for _ in ()).throw(RuntimeError("a bug")))
    assert no_temporaries(tmp_path) == []
