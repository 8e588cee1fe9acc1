"""A run folder as the report reads it: a sweep (`SweepRun`) or a baseline run (`BaselineRun`), never changed.

Only `sweeper.rundir.layout` (file names) and `sweeper.files` (readers) are used, so `sweeper report` needs neither
torch nor Ray. A half-written folder still loads: `missing` says, one line each, what a complete run would
also have, and the report shows those lines instead of failing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sweeper.errors import SweeperError
from sweeper.files import check_sqlite, read_csv, read_json, read_jsonl
from sweeper.rundir.layout import (CONFIG_FILE, CONFIRM_SUMMARY_CSV, EXPERIMENT_DIR, HISTORY_CSV, METRICS_FILE,
                                   SPACE_COPY, STUDY_FILE, SWEEP_FILE, TRIALS_CSV)
from sweeper.rundir.records import recorded_objective
from sweeper.search.space import load_space
from sweeper.search.tables import collect, run_space, space_dimensions
from sweeper.training.objective import Objective


def num(v: Any) -> float | None:
    """A finite float, or None for missing/NaN/non-numeric values (what a table cell may hold)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _as_bool(s: pd.Series) -> pd.Series:
    """CSV booleans ('True'/'False', possibly blank) as bool, blank = False."""
    if s.dtype == bool:
        return s
    return s.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))


class RunFacts:
    """What a run folder's own record (sweep.json or config.json, as `info`) says about its inputs."""

    info: dict[str, Any]

    @property
    def synthetic(self) -> bool | None:
        """Whether the run's data is synthetic (None: unknown)."""
        return (self.info.get("data") or {}).get("synthetic")

    @property
    def backbone_trained(self) -> bool | None:
        """Whether its backbone had trained weights (None: unknown)."""
        return (self.info.get("backbone") or {}).get("trained")


@dataclass(frozen=True)
class SweepRun(RunFacts):
    """A sweep folder's saved results; `missing` says, one line each, what a complete run would also have."""

    run_dir: Path
    name: str  # sweep name (sweep.json options.name, else the folder name); the study's: study_name
    info: dict[str, Any]  # sweep.json ({} when missing)
    trials: pd.DataFrame  # one row per trial (trials.csv, or rebuilt from the trial records under ray/)
    history: pd.DataFrame  # one row per trial and epoch (history.csv, or rebuilt likewise)
    missing: tuple[str, ...] = ()  # what is absent or unfinished, for the reader
    notes: tuple[str, ...] = ()  # how the report got its tables (e.g. rebuilt from ray/)
    confirm: pd.DataFrame | None = None  # confirm_summary.csv of `sweeper confirm`, when it has been run
    objective: Objective = Objective()  # what ranks the trials (the metric and mode sweep.json records)
    dims: tuple[str, ...] = ("head",)  # what a trial's description names (`sweeper.search.tables.describe_trial`)

    @property
    def study_name(self) -> str:
        """The Optuna study's name: the one the sweep was created with (sweep.json started_with; a resume under
        another --name keeps it), else the sweep's name."""
        return (self.info.get("started_with") or {}).get("study_name") or self.name

    @property
    def score(self) -> str:
        """trials.csv column every ranking uses: the objective's best epoch, e.g. best_val_iou."""
        return self.objective.column

    @property
    def planned_trials(self) -> int | None:
        return (self.info.get("options") or {}).get("trials")

    @property
    def baseline(self) -> pd.Series | None:
        """The sweep's own phase-1 trial (the first one, if a resume made two), or None."""
        rows = self.trials[self.trials.baseline] if "baseline" in self.trials else self.trials.iloc[:0]
        return rows.iloc[0] if len(rows) else None

    @property
    def baseline_score(self) -> float | None:
        b = self.baseline
        return None if b is None else num(b.get(self.score))

    def ranked(self) -> pd.DataFrame:
        """All trials, best score first (by the objective's mode); trials without a score last."""
        if self.trials.empty:
            return self.trials
        return self.trials.sort_values([self.score, "trial"], ascending=[self.objective.ascending, True],
                                       na_position="last")

    def scored(self) -> pd.DataFrame:
        """Ranked trials that have a score."""
        r = self.ranked()
        return r[r[self.score].notna()] if not r.empty else r

    def failed(self) -> pd.DataFrame:
        return self.trials[self.trials.status == "ERROR"] if "status" in self.trials else self.trials.iloc[:0]


@dataclass(frozen=True)
class BaselineRun(RunFacts):
    """A `python -m sweeper baseline` folder: its config.json and per-epoch records."""

    run_dir: Path
    info: dict[str, Any]  # config.json ({} when missing)
    history: tuple[dict[str, Any], ...]  # metrics.jsonl records
    missing: tuple[str, ...] = ()


def run_kind(run_dir: Path) -> str:
    """'sweep' or 'baseline', from the files a run folder holds; anything else is a SweeperError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SweeperError(f"{run_dir}: no such folder")
    # A bare ray/ is not enough: /tmp holds Ray's own session folder of that name.
    if ((run_dir / SWEEP_FILE).is_file() or (run_dir / TRIALS_CSV).is_file()
            or ((run_dir / EXPERIMENT_DIR).is_dir() and (run_dir / SPACE_COPY).is_file())):
        return "sweep"
    if (run_dir / CONFIG_FILE).is_file() or (run_dir / METRICS_FILE).is_file():
        return "baseline"
    raise SweeperError(f"{run_dir}: not a run folder (no {SWEEP_FILE} or {TRIALS_CSV} of a sweep, "
                       f"no {CONFIG_FILE} or {METRICS_FILE} of a baseline run)")


def _rebuild_tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """trials and history from the trial records under ray/ (in memory: the run folder is not written)."""
    space_path = run_dir / SPACE_COPY
    if not space_path.is_file():
        raise SweeperError(f"{space_path} is missing, so ray/ cannot be read into tables")
    trials, history = collect(run_dir, load_space(space_path))
    return trials, history, f"This report's tables were rebuilt from the trial records under {EXPERIMENT_DIR}/."


def load_sweep(run_dir: Path) -> SweepRun:
    """Read a sweep folder (complete or half-written) into a `SweepRun` without changing it."""
    run_dir = Path(run_dir)
    if run_kind(run_dir) != "sweep":
        raise SweeperError(f"{run_dir}: not a sweep folder (no {SWEEP_FILE}, {TRIALS_CSV} or {EXPERIMENT_DIR}/)")
    missing: list[str] = []
    notes: list[str] = []
    info: dict[str, Any] = {}
    if (run_dir / SWEEP_FILE).is_file():
        info = read_json(run_dir / SWEEP_FILE)
        if "wall_seconds" not in info:  # the CLI adds it when the search returns
            missing.append(f"{SWEEP_FILE} has no wall_seconds: the sweep did not finish (killed, or still running)")
    else:
        missing.append(f"{SWEEP_FILE}: missing, so the data kind (synthetic or real), the backbone and the "
                       f"planned number of trials are unknown")

    trials, history = pd.DataFrame(), pd.DataFrame()
    if (run_dir / TRIALS_CSV).is_file():
        trials = read_csv(run_dir / TRIALS_CSV)
        if (run_dir / HISTORY_CSV).is_file():
            history = read_csv(run_dir / HISTORY_CSV)
        else:
            missing.append(f"{HISTORY_CSV}: missing, so there are no per-epoch curves or per-class IoU")
    elif (run_dir / EXPERIMENT_DIR).is_dir():
        try:
            trials, history, note = _rebuild_tables(run_dir)
            notes.append(note)
            missing.append(_missing_tables(run_dir, finished="wall_seconds" in info))
        except SweeperError as e:
            missing.append(f"{TRIALS_CSV}: missing, and ray/ could not be read ({str(e).splitlines()[0]})")
    else:
        missing.append(f"{TRIALS_CSV} and {EXPERIMENT_DIR}/: missing, so no trial has results yet")

    space = run_space(run_dir)  # its dimensions, for the trials' descriptions
    objective = recorded_objective(info)  # what evaluate and export call best too
    score = objective.column
    if not trials.empty:
        if score not in trials:
            raise SweeperError(f"{run_dir / TRIALS_CSV}: no {score} column, so trials cannot be ranked")
        for col in ("baseline", "stopped_early", "incomplete"):
            trials[col] = _as_bool(trials[col]) if col in trials else False
        trials[score] = pd.to_numeric(trials[score], errors="coerce")
    if not history.empty and "baseline" in history:
        history["baseline"] = _as_bool(history["baseline"])

    confirm = read_csv(run_dir / CONFIRM_SUMMARY_CSV) if (run_dir / CONFIRM_SUMMARY_CSV).is_file() else None
    run = SweepRun(run_dir=run_dir, name=(info.get("options") or {}).get("name") or run_dir.name, info=info,
                   trials=trials, history=history, confirm=confirm, objective=objective,
                   dims=space_dimensions(space, trials))
    missing += _trial_gaps(run)
    if (run_dir / STUDY_FILE).is_file():
        check_sqlite(run_dir / STUDY_FILE)  # before report/ is written: a damaged study is one line
    else:
        missing.append(f"{STUDY_FILE}: missing, so no hyperparameter importance")
    return dataclasses.replace(run, missing=tuple(missing), notes=tuple(notes))


def _missing_tables(run_dir: Path, *, finished: bool) -> str:
    """The line naming what is missing when trials.csv is (history.csv may be there), the tables rebuilt."""
    if (run_dir / HISTORY_CSV).is_file():
        return f"{TRIALS_CSV}: missing ({HISTORY_CSV} is there); this report rebuilt the trials from {EXPERIMENT_DIR}/"
    why = "missing" if finished else "not written (the sweep did not finish)"
    return f"{TRIALS_CSV} and {HISTORY_CSV}: {why}; this report rebuilt them from {EXPERIMENT_DIR}/"


def _trial_gaps(run: SweepRun) -> list[str]:
    """Lines on trials that are absent or unfinished, and on the baseline trial."""
    out = []
    t = run.trials
    planned = run.planned_trials
    if planned and len(t) < planned:
        out.append(f"{planned - len(t)} of {planned} planned trials have no results (never started)")
    if t.empty:
        return out
    if "status" in t:
        open_ = t[~t.status.isin(["TERMINATED", "ERROR"])]
        if len(open_):
            ids = ", ".join(str(i) for i in open_.trial)
            out.append(f"{len(open_)} trial(s) did not finish ({', '.join(sorted(set(open_.status)))}): "
                       f"trial {ids}; their scores are partial")
    b = run.baseline
    if b is None:
        out.append("no baseline trial (phase-1 settings) in this sweep: no comparison with the sweep's own baseline")
    elif run.baseline_score is None:
        out.append(f"the baseline trial {int(b.trial)} has no score ({b.get('status')}): "
                   f"no comparison with the sweep's own baseline")
    elif num(b.get("epochs_run")) is not None and num(b.get("epochs_planned")) is not None \
            and b.epochs_run < b.epochs_planned:
        out.append(f"the baseline trial {int(b.trial)} ran {int(b.epochs_run)} of {int(b.epochs_planned)} epochs: "
                   f"its score is partial")
    return out


def load_baseline(run_dir: Path) -> BaselineRun:
    """Read a baseline run folder (complete or not) without changing it."""
    run_dir = Path(run_dir)
    missing = []
    info = read_json(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else {}
    if not info:
        missing.append(f"{CONFIG_FILE}: missing, so the data kind and the configuration are unknown")
    history = tuple(read_jsonl(run_dir / METRICS_FILE)) if (run_dir / METRICS_FILE).is_file() else ()
    planned = (info.get("config") or {}).get("epochs")
    if not history:
        missing.append(f"{METRICS_FILE}: missing or empty, so no epoch finished")
    elif planned and len(history) < planned:
        missing.append(f"only {len(history)} of {planned} epochs finished: the run was stopped or is still running")
    return BaselineRun(run_dir=run_dir, info=info, history=history, missing=tuple(missing))
