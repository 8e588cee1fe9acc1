"""Progress on stderr: a bar for long loops (tqdm), and a sweep's live lines (`ProgressPrinter`).

On a terminal the bar redraws in place; in a log (not a TTY) it prints a line per tenth of the work, never
a carriage-return-joined line per item. A sweep prints one line per finished epoch and per trial end.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

from sweeper.errors import is_out_of_memory
from sweeper.rundir.layout import TRIAL_KEY
from sweeper.rundir.records import is_baseline
from sweeper.search.space import SearchSpace
from sweeper.training.config import PUBLISHED_BASELINE_IOU
from sweeper.training.objective import best_index, best_value

# --------------------------------------------------------------------------- a sweep's lines


def trial_index(trial) -> int:
    """A Ray trial's number: the study's (TRIAL_KEY in its config), else its 0-based creation order (its
    experiment tag starts with a 1-based counter, '3_lr=...')."""
    number = (getattr(trial, "config", None) or {}).get(TRIAL_KEY)
    if isinstance(number, int):
        return number
    m = re.match(r"(\d+)", str(getattr(trial, "experiment_tag", "") or ""))
    return int(m.group(1)) - 1 if m else -1


def trial_error(trial) -> str:
    """The first line of a failed trial's error, from its error file."""
    # Ray writes it on the driver (error_file) and copies it into the trial folder (path) later
    found = [p for p in (getattr(trial, "error_file", None), Path(trial.path or "") / "error.txt")
             if p and Path(p).is_file()]
    if found:
        path = Path(found[0])
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        # Ray's error text ends with the exception line; keep the last one that names an error.
        for ln in reversed(lines):
            if "Error" in ln or "Exception" in ln:
                return ln.strip()[:300]
        return lines[-1][:300] if lines else "error"
    return str(getattr(trial, "error_msg", None) or "error")


class ProgressPrinter:
    """Live progress on stderr: one line per finished epoch and per trial end, with counts and best."""

    def __init__(self, space: SearchSpace, stream=sys.stderr, *, total: int | None = None) -> None:
        self.space, self.stream = space, stream
        self.total = total or space.trials  # the sweep's budget (--trials overrides the space's)
        self.baseline = space.baseline_point()
        self.best: tuple[float, int] | None = None  # (score, trial) of the best epoch seen in any trial
        self.baseline_score: float | None = None  # the baseline trial's best epoch so far
        self.oom: set[str] = set()  # trial ids that failed for lack of GPU memory: counted apart
        self.started = time.perf_counter()

    def callback(self):
        """A Ray Tune Callback that forwards events to this printer."""
        from ray.tune import Callback

        printer = self

        class _Cb(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                printer.on_result(trials, trial, result)

            def on_trial_complete(self, iteration, trials, trial, **info):
                printer.on_end(trials, trial, "done")

            def on_trial_error(self, iteration, trials, trial, **info):
                printer.on_end(trials, trial, "FAILED")

            def on_trial_recover(self, iteration, trials, trial, **info):
                printer.on_moved(trials, trial)

        return _Cb()

    def _counts(self, trials, ending=None) -> str:
        # Callbacks run before Ray updates the ending trial's status: count it as finished here.
        status = [("TERMINATED" if t is ending else t.status) for t in trials]
        stopped = sum(1 for t, s in zip(trials, status) if s == "TERMINATED" and self._stopped_early(t))
        return (f"running {status.count('RUNNING')} | done {status.count('TERMINATED') - stopped} | "
                f"stopped early {stopped} | failed {status.count('ERROR')}"
                f"{f' ({len(self.oom)} out of GPU memory)' if self.oom else ''} | of {self.total}")

    @staticmethod
    def _stopped_early(trial) -> bool:
        last = trial.last_result or {}
        return last.get("epoch", 0) < trial.config.get("epochs", 0)

    def _best(self) -> str:
        parts = []
        if self.best:
            parts.append(f"best {self.best[0]:.4f} (trial {self.best[1]})")
        if self.baseline_score is not None:
            parts.append(f"baseline trial {self.baseline_score:.4f}")
        if self.space.metric == "val_iou":  # the published figure is a val IoU: beside another metric it misleads
            parts.append(f"published {PUBLISHED_BASELINE_IOU}")
        return ", ".join(parts)

    def on_result(self, trials, trial, result) -> None:
        idx = trial_index(trial)
        score = result.get(self.space.metric)
        if score is not None and not math.isnan(score):
            # the best so far against this epoch, by the one best-epoch rule (the earlier wins a tie)
            pair = [p for p in (self.best, (score, idx)) if p is not None]
            self.best = pair[best_index([v for v, _ in pair], mode=self.space.mode)]
            if is_baseline(trial.config, self.baseline):
                self.baseline_score = best_value([self.baseline_score, score], mode=self.space.mode)
        self.stream.write(f"[{time.perf_counter() - self.started:6.0f}s] trial {idx:>3} epoch "
                          f"{result.get('epoch')}/{trial.config.get('epochs')}: {self.space.metric} "
                          f"{'-' if score is None else f'{score:.4f}'}  | {self._best()} | {self._counts(trials)}\n")
        self.stream.flush()

    def on_moved(self, trials, trial) -> None:
        """A trial that lost its node continues from its checkpoint (its last reported epoch) elsewhere."""
        epoch = (trial.last_result or {}).get("epoch")  # the checkpoint Ray knows: none before its first report
        where = f"from epoch {epoch}" if epoch else "from its start"
        self.stream.write(f"[{time.perf_counter() - self.started:6.0f}s] trial {trial_index(trial):>3} moved to "
                          f"another node after its node was lost, {where} | {self._counts(trials)}\n")
        self.stream.flush()

    def on_end(self, trials, trial, what: str) -> None:
        idx = trial_index(trial)
        if what == "FAILED":
            error = trial_error(trial)
            if is_out_of_memory(error):
                self.oom.add(trial.trial_id)
            what = f"FAILED: {error}"
        if what == "done" and self._stopped_early(trial):
            what = f"stopped early by ASHA at epoch {(trial.last_result or {}).get('epoch')}"
        self.stream.write(f"[{time.perf_counter() - self.started:6.0f}s] trial {idx:>3} {what} | "
                          f"{self._counts(trials, ending=trial if not what.startswith('FAILED') else None)}\n")
        self.stream.flush()
