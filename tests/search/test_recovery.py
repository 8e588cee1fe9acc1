"""Which trial failures Ray Tune retries from the checkpoint (a lost node or process) and which it records
once (the trial's own errors), with Ray's own exception and Trial types. The whole path on a real cluster
that loses a node is tests/search/test_cluster_netns.py's."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402

from sweeper.errors import SweeperError  # noqa: E402
from sweeper.search.recovery import lost_process  # noqa: E402
from sweeper.training.device import GpuOutOfMemoryError  # noqa: E402
from sweeper.training.train import TrainingDiverged  # noqa: E402

ray = pytest.importorskip("ray")
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError  # noqa: E402


def raised_in_trial(error: Exception) -> RayTaskError:
    """What the driver receives when a trial raises `error`: Ray's RayTaskError carrying it as its cause."""
    try:
        raise error
    except Exception as e:
        return RayTaskError("ImplicitFunc.train", "Traceback ...", e)


@pytest.mark.parametrize("error", [TrainingDiverged("training loss became nan at epoch 2"),
                                   GpuOutOfMemoryError("GPU out of memory during training"),
                                   SweeperError("data/train/0001.png: not a PNG"), ValueError("a bug")])
def test_an_error_the_trial_raised_is_not_retried(error):
    assert not lost_process(raised_in_trial(error))


@pytest.mark.parametrize("error", [
    ActorUnavailableError("The actor is temporarily unavailable: RpcError: Socket closed", None),  # seen: kill -9 of a node
    ActorDiedError(),  # the actor's process died (its node, or a kill)
    raised_in_trial(ActorDiedError()),  # as Ray Train wraps it: Tune unwraps it too
])
def test_a_lost_process_or_node_is_retried(error):
    assert lost_process(error)


def test_a_process_the_memory_monitor_killed_is_not_retried():
    error = RayActorError(error_msg="Task was killed due to the node running low on memory. ... OutOfMemoryError")
    assert not lost_process(error)
    assert not lost_process(None)


SPACE = """
metric: val_iou
mode: max
trials: 2
max_concurrent: 1
asha: {max_epochs: 2, grace_period: 2, reduction_factor: 2}
fixed: {epochs: 2, train_metrics: false, image_height: 56, image_width: 112}
params:
  lr: {type: categorical, choices: [1.0e-4, 1.0e+6]}
  optimizer: {type: categorical, choices: [sgd]}
"""


def trial_processes(driver_pid: int) -> list:
    """The Ray Tune trial processes of the local Ray a driver started (its descendants only)."""
    import psutil

    try:
        children = psutil.Process(driver_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in children:
        try:
            if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::ImplicitFunc"):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_resume_continues_a_trial_its_lost_process_ended_and_leaves_one_its_own_error_ended(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd
    from conftest import ROOT, make_dataset

    from sweeper.search.recovery import NODE_LOSSES_RETRIED

    data = make_dataset(tmp_path / "data", train=4, val=2)
    (tmp_path / "space.yaml").write_text(SPACE)
    args = [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(data), "--backbone", "random_vits14",
            "--space", str(tmp_path / "space.yaml"), "--name", "lost", "--out", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache"), "--seed", "3"]
    run = tmp_path / "results" / "lost"
    driver = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kills, deadline = 0, time.time() + 400
    try:  # trial 0's process killed each time Ray starts it again, once more than the retries allowed
        while kills <= NODE_LOSSES_RETRIED and time.time() < deadline and driver.poll() is None:
            for p in trial_processes(driver.pid):
                p.send_signal(signal.SIGKILL)
                kills += 1
                time.sleep(1)  # one process per retry
            time.sleep(0.1)
        _, err = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0 and kills == NODE_LOSSES_RETRIED + 1, err[-3000:]
    before = pd.read_csv(run / "trials.csv").set_index("trial")
    assert before.status.tolist() == ["ERROR", "ERROR"], before[["status", "error"]]
    assert before.loc[1, "lr"] == 1e6 and "training loss became" in before.loc[1, "error"]  # its own error
    assert before.loc[0, "node_losses"] == NODE_LOSSES_RETRIED  # moved 3 times, the 4th loss ended it
    (folder,) = [f.parent for f in run.glob("ray/*/config.json") if json.loads(f.read_text())["number"] == 1]
    ours = ("config.json", "epochs.jsonl", "end.json", "moves.jsonl")  # the project's own record of the trial
    own = {f.name: f.read_bytes() for f in folder.iterdir() if f.name in ours}
    assert json.loads(own["end.json"])["node_lost"] is False

    resumed = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = pd.read_csv(run / "trials.csv").set_index("trial")
    history = pd.read_csv(run / "history.csv")
    assert after.status.tolist() == ["TERMINATED", "ERROR"]  # the lost one continued, the diverged one stayed
    assert after.loc[0, "epochs_run"] == 2 and not history.duplicated(["trial", "epoch"]).any()
    assert after.loc[1, "error"] == before.loc[1, "error"]
    kept = {f.name: f.read_bytes() for f in folder.iterdir() if f.name in ours}
    assert kept == own and "end.json" in own  # its record as it ended: config, epochs (if any), end
