"""A lost node costs no trial: Ray Tune retries a trial whose process or node went away from its last
checkpoint, on whichever node can run it, and never retries a trial that failed for its own reasons.

Ray Tune's FailureConfig(max_failures) retries every failure alike: a diverged loss, a GPU out-of-memory or
bad data would run again and fail again. Here a trial is retried only when Ray reports its process lost (a
RayActorError: its node died or its process was killed), never when the trial raised (a RayTaskError: the
project's own errors, TrainingDiverged, out of memory, SweeperError), and never when Ray's memory monitor
killed it. Ray 2.60 has no public hook for that choice: its Trial.should_recover is the one place, so every
trial the controller holds (new or restored from a snapshot) is given `node_loss_trial()`'s class, which adds
only that rule. A retried trial continues in the same trial folder from its checkpoint (`trial_main`), each
epoch recorded once; the move is written to its folder (TRIAL_MOVES) and printed by the progress lines.

`search --resume` continues what a crash left unfinished: a trial still running when the driver died, and a
trial that ended ERROR because its node or process was lost (once more than NODE_LOSSES_RETRIED allows, or
with a sweeper before this rule). A trial that ended ERROR for its own reasons is left as it ended: Ray
restarts every errored trial, and `trial_main` ends such a one at once with `KeptAsEndedError`, its
record (TRIAL_END, epochs, study entry) untouched.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from sweeper.errors import SweeperError
from sweeper.files import read_json
from sweeper.rundir.layout import TRIAL_END
from sweeper.rundir.records import write_trial_move

NODE_LOSSES_RETRIED = 3  # lost nodes a trial survives: each continues from its checkpoint; one more ends it ERROR
_MEMORY_KILL = ("OutOfMemoryError", "memory monitor", "low on memory")  # Ray's memory monitor: the trial's own
# an error line (TRIAL_END) of a lost process, written before TRIAL_END said `node_lost`: Ray's actor errors
_LOST_LINE = re.compile(r"^The actor \w+ (is unavailable|died)|ActorDiedError|ActorUnavailableError|RayActorError")
KEPT_MARK = "left as it ended (its own error), not resumed"  # starts KeptAsEndedError's message


class KeptAsEndedError(SweeperError):
    """Raised by a trial that a resume restarted although it had ended ERROR for its own reasons."""


def lost_process(error: BaseException | None) -> bool:
    """Whether a trial failed because its process or node went away (Ray's actor errors), not because the
    trial raised or used too much memory."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(error, RayTaskError):  # what Ray Tune itself unwraps (Trial._handle_ray_task_error)
        error = error.as_instanceof_cause()
    if not isinstance(error, RayActorError):
        return False
    return not any(mark in str(error) for mark in _MEMORY_KILL)


@functools.lru_cache(maxsize=None)
def node_loss_trial() -> type:
    """Ray Tune's Trial, retried (up to its max_failures) only after `lost_process` errors."""
    from ray.tune.experiment import Trial

    class NodeLossTrial(Trial):
        def handle_error(self, exc=None):
            # temporary_state: what Ray keeps out of its snapshots
            self.temporary_state.node_lost = lost_process(exc)
            super().handle_error(exc)

        def should_recover(self) -> bool:
            return bool(getattr(self.temporary_state, "node_lost", False)) and super().should_recover()

    return NodeLossTrial


def node_loss_callback(describe_error):
    """A Ray Tune Callback giving every trial the node-loss retry rule, and recording each move in the trial's
    folder (`describe_error(trial)`: the error line that moved it)."""
    from ray.tune import Callback

    class _NodeLoss(Callback):
        def on_step_begin(self, iteration, trials, **info):
            # Ray creates plain Trials (new, and restored on a resume): each is switched to the rule before it
            # can fail (a trial created in this step starts no process before the next one)
            cls = node_loss_trial()
            for trial in trials:
                if type(trial) is not cls:
                    trial.__class__ = cls
                    trial.max_failures = NODE_LOSSES_RETRIED

        def on_trial_recover(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            write_trial_move(Path(trial.path), after_epoch=int(last.get("epoch") or 0), node_id=last.get("node_id"),
                             error=describe_error(trial))

    return _NodeLoss()


def ended_by_lost_node(end: dict) -> bool:
    """Whether a trial's TRIAL_END is an ERROR its lost node or process caused (a resume continues it)."""
    if "node_lost" in end:
        return bool(end["node_lost"])
    return bool(_LOST_LINE.search(str(end.get("error") or "")))


def kept_error(folder: Path) -> str | None:
    """The error a trial folder's TRIAL_END records when the trial ended ERROR for its own reasons (a resume
    leaves it as it ended), else None."""
    path = Path(folder) / TRIAL_END
    end = read_json(path) if path.is_file() else None
    if not end or end.get("status") != "ERROR" or ended_by_lost_node(end):
        return None
    return str(end.get("error") or "error")
