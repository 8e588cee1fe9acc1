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
