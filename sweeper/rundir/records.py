"""Each sweep trial's own record, in its folder under ray/: its config, its epochs, how it ended; the versions
recorded next to the numbers. JSON only, read without torch or Ray (report, confirm, evaluate and the tables
read these, never Ray's pickled state). File names: `sweeper.rundir.layout`.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sweeper import __version__
from sweeper.errors import SweeperError
from sweeper.files import append_jsonl, dumps, read_json, read_jsonl, write_json, write_text_atomic
from sweeper.rundir.layout import (EXPERIMENT_DIR, STATE_FILE, SWEEP_FILE, TRIAL_CONFIG, TRIAL_END, TRIAL_EPOCHS,
                                   TRIAL_KEY, TRIAL_MOVES)
from sweeper.training.objective import Objective


@dataclass(frozen=True)
class TrialRecord:
    """One trial folder under ray/ as its own TRIAL_CONFIG describes it.

    A trial's number can own several folders: a trial continued after its driver was killed before Ray's
    snapshot knew it runs again as a new Ray trial; its epochs and checkpoint span both folders.
    """

    path: Path  # the trial folder
    trial_id: str  # Ray's trial id of this folder
    number: int | None  # the study's trial number; None for a confirm run
    config: dict[str, Any]  # the config as the trial ran it (TRIAL_KEY included)
    started: float  # time.time() when the trial started: orders a number's folders

    @property
    def end(self) -> dict[str, Any] | None:
        """How the trial ended (TRIAL_END), None while it runs or when its driver was killed."""
        path = self.path / TRIAL_END
        return read_json(path) if path.is_file() else None

    def epochs(self) -> list[dict[str, Any]]:
        """The epochs this folder's trial reported (TRIAL_EPOCHS)."""
        return read_epochs(self.path)

    def moves(self) -> list[dict[str, Any]]:
        """Each time this folder's trial lost its node and continued from its checkpoint (TRIAL_MOVES)."""
        path = self.path / TRIAL_MOVES
        return read_jsonl(path) if path.is_file() else []

    def torn(self) -> bool:
        """Whether this folder's TRIAL_EPOCHS ends in a torn line (a write or copy cut short): an epoch the
        trial ran is missing from its record."""
        path = self.path / TRIAL_EPOCHS
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
        try:
            return bool(lines) and not isinstance(json.loads(lines[-1]), dict)
        except json.JSONDecodeError:
            return True

    def checkpoint(self) -> Path | None:
        """This folder's latest checkpoint state file."""
        states = sorted(self.path.glob(f"checkpoint_*/{STATE_FILE}"))
        return states[-1] if states else None


def read_epochs(folder: Path) -> list[dict[str, Any]]:
    """A trial folder's TRIAL_EPOCHS, one record per epoch in order (an epoch re-run in that folder: the last)."""
    path = Path(folder) / TRIAL_EPOCHS
    by_epoch = {int(r["epoch"]): r for r in (read_jsonl(path) if path.is_file() else []) if "epoch" in r}
    return [by_epoch[e] for e in sorted(by_epoch)]


def truncate_epochs(folder: Path, last_epoch: int) -> None:
    """Keep a trial folder's TRIAL_EPOCHS up to `last_epoch` (the checkpoint a continued trial starts from):
    lines written after that checkpoint (and a torn last line) go, so the rerun records each epoch once."""
    path = Path(folder) / TRIAL_EPOCHS
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if int(r.get("epoch", 0)) <= last_epoch]
    if len(kept) != sum(1 for ln in path.read_text().splitlines() if ln.strip()):
        write_text_atomic(path, "".join(dumps(r) + "\n" for r in kept))


def write_trial_start(folder: Path, config: dict[str, Any], *, trial_id: str) -> None:
    """The trial's own record of what it runs, in its folder (see TRIAL_CONFIG)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / TRIAL_CONFIG, {"trial_id": trial_id, "number": config.get(TRIAL_KEY), "config": config,
                                      "started": time.time()})


def write_trial_end(folder: Path, status: str, error: str | None = None, *, node_lost: bool = False) -> None:
    """The driver's record of how a trial ended (see TRIAL_END); `node_lost`: it failed because its node or
    process was lost (too often), not for its own reasons, so a resume continues it."""
    if folder.is_dir():
        write_json(folder / TRIAL_END, {"status": status, "error": error, "node_lost": node_lost,
                                        "ended": time.time()})


def write_trial_move(folder: Path, *, after_epoch: int, node_id: str | None, error: str | None) -> None:
    """The driver's record of a trial continued elsewhere after losing its node (see TRIAL_MOVES)."""
    if folder.is_dir():
        append_jsonl(folder / TRIAL_MOVES, {"after_epoch": after_epoch, "node_id": node_id, "error": error,
                                            "time": time.time()})


def read_trial_records(exp_dir: Path) -> list[TrialRecord]:
    """Every trial folder's record under an experiment folder, in start order; a damaged one is one line."""
    out = []
    for path in sorted(Path(exp_dir).glob(f"*/{TRIAL_CONFIG}")):
        rec = read_json(path)
        number, config = rec.get("number"), rec.get("config")
        if (not isinstance(config, dict) or not isinstance(rec.get("trial_id"), str)
                or not isinstance(rec.get("started"), (int, float))
                or not (number is None or (isinstance(number, int) and number >= 0))):
            raise SweeperError(f"{path}: not a trial record (expected trial_id, number, config and started)")
        out.append(TrialRecord(path=path.parent, trial_id=rec["trial_id"], number=number, config=config,
                               started=float(rec["started"])))
    return sorted(out, key=lambda r: r.started)


def trial_groups(exp_dir: Path) -> dict[int, list[TrialRecord]]:
    """A sweep's trial folders by study number, each number's folders in start order."""
    groups: dict[int, list[TrialRecord]] = {}
    for r in read_trial_records(exp_dir):
        if r.number is not None:
            groups.setdefault(r.number, []).append(r)
    return dict(sorted(groups.items()))


def merged_epochs(records: list[TrialRecord]) -> list[dict[str, Any]]:
    """A trial's epochs over all its folders; an epoch in a later folder replaces the earlier one."""
    by_epoch = {int(r["epoch"]): r for rec in records for r in rec.epochs()}
    return [by_epoch[e] for e in sorted(by_epoch)]


def latest_checkpoint(records: list[TrialRecord]) -> tuple[TrialRecord, Path] | None:
    """The checkpoint of a trial's latest-started folder that has one."""
    for rec in reversed(records):
        state = rec.checkpoint()
        if state is not None:
            return rec, state
    return None


def trial_configs(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Each sweep trial's full config (as it ran, its study number left out), by trial number, from the
    trials' own records (never Ray's pickled state)."""
    return {n: {k: v for k, v in records[-1].config.items() if k != TRIAL_KEY}
            for n, records in trial_groups(Path(run_dir) / EXPERIMENT_DIR).items()}


def is_baseline(config: dict[str, Any], baseline_point: dict[str, Any]) -> bool:
    """Whether a trial config is the enqueued phase-1 point."""
    return all(config.get(k) == v for k, v in baseline_point.items())


def versions() -> dict[str, str]:
    """Versions that decide the numbers, recorded next to them."""
    import torch  # here, not at import: the records are read without torch

    return {"sweeper": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "argv": " ".join(sys.argv)}


def recorded_objective(sweep: dict[str, Any]) -> Objective:
    """What ranks a sweep's trials, as its sweep.json (`sweep`, {} when there is none) records its space's metric
    and mode; val IoU, max, for a baseline run and for sweeps from before other metrics could be chosen."""
    space = sweep.get("space") or {}
    if space.get("metric") is None:
        return Objective()
    return Objective(metric=str(space["metric"]), mode=str(space.get("mode") or "max"))


def run_objective(run_dir: Path) -> Objective:
    """`recorded_objective` of a run folder's sweep.json."""
    path = Path(run_dir) / SWEEP_FILE
    return recorded_objective(read_json(path) if path.is_file() else {})
