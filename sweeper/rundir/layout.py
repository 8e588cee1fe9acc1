"""The run folder's one reader and writer: every file name a run writes (defined here once), the one best-epoch
function, each trial's own record (config, epochs, end), a sweep's tables, and phase 1's text file.

A baseline run (`sweeper baseline`) writes CONFIG_FILE, METRICS_FILE, TEXT_FILE and HEAD_FILE. A sweep
(`sweeper search`) writes:

    sweep.json     what was run: options, space, data and backbone, versions
    space.yaml     the search space file as used (a resumed sweep reads this copy)
    study.db       the Optuna study (SQLite): `optuna-dashboard sqlite:///.../study.db`
    ray/           Ray Tune's experiment folder (trial dirs, checkpoints, state); each trial dir also holds
                   the project's own record of it (TRIAL_CONFIG, TRIAL_EPOCHS, TRIAL_END), all that the
                   tables, confirm and evaluate read: Ray's state is pickled, and only --resume loads it
    trials.csv     one row per trial; history.csv one row per trial and epoch
    confirm/       `sweeper confirm`'s Ray experiment; confirm.csv and confirm_summary.csv beside it
    report/        `sweeper report`; evaluation/<label>/ from `sweeper evaluate`

Report, confirm, evaluate and the tables read only the project's own files written here, never Ray's pickled
state. This module imports neither torch nor Ray: `sweeper report` reads a run folder without them (the bytes
go through `sweeper.files`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sweeper.training.config import PUBLISHED_BASELINE_IOU, TrainConfig
from sweeper.errors import SweeperError, is_out_of_memory
from sweeper.files import dumps, read_json, read_jsonl, write_json, write_text_atomic
from sweeper.training.objective import Objective
from sweeper.search.space import SearchSpace, load_space

# --- any run folder
LOCK_FILE = ".lock"  # JSON {pid, host, command, since}; present while one process owns the folder
REPORT_DIR = "report"  # `sweeper report`'s output
EVALUATION_DIR = "evaluation"  # RUN_DIR/evaluation/<label>/ unless `sweeper evaluate --out` is given

# --- a baseline run, in the organisers' layout
METRICS_FILE = "metrics.jsonl"  # one JSON line per epoch
CONFIG_FILE = "config.json"  # the TrainConfig as run, with data and backbone facts
TEXT_FILE = "evaluation_metrics.txt"  # the organisers' summary text (also written by `evaluate`)
HEAD_FILE = "segmentation_head.pth"  # the head's state_dict, loadable by the organisers' test script

# --- a sweep
EXPERIMENT_DIR = "ray"
STUDY_FILE = "study.db"
SWEEP_FILE = "sweep.json"
SPACE_COPY = "space.yaml"
TRIALS_CSV = "trials.csv"
HISTORY_CSV = "history.csv"
STATE_FILE = "state.pt"  # inside each Ray checkpoint: RunState.state_dict() plus BEST_KEY
BEST_KEY = "best"  # in STATE_FILE: {"epoch", "metric", <metric>, "val_iou", "head"} of the trial's best epoch so far
CONFIRM_DIR = "confirm"  # Ray experiment of `sweeper confirm`, beside EXPERIMENT_DIR
CONFIRM_CSV = "confirm.csv"  # one row per (config, seed) re-run
CONFIRM_SUMMARY_CSV = "confirm_summary.csv"  # one row per config: mean, spread, gain, verdict
# The project's own record of each trial, in its folder under ray/ (report, confirm and evaluate read only
# these, never Ray's pickled experiment state, so a results folder is data, not code):
TRIAL_CONFIG = "config.json"  # written by the trial when it starts: number, Ray trial id, config as run, start time
TRIAL_EPOCHS = "epochs.jsonl"  # written by the trial: one JSON line per reported epoch, before its checkpoint
TRIAL_END = "end.json"  # written by the driver when the trial ends: status (TERMINATED or ERROR) and error line
CONFIRM_KEY = "confirm_of"  # config key naming the sweep trial a confirm run repeats
TRIAL_KEY = "trial_number"  # config key: the trial's number in the Optuna study, which the tables use too
CONFIG_COLUMNS = ("head", "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "epochs",
                  "schedule_epochs", "batch_size", "class_weights", "class_weight_power", "class_weight_max",
                  "label_mode", "train_labels", "flip_prob")  # always in trials.csv

# --- `sweeper evaluate`'s folder
METRICS_JSON = "test_metrics.json"
MASKS_DIR, COLOR_DIR, COMPARISONS_DIR = "masks", "masks_color", "comparisons"
MASK_NAME, COLOR_NAME = "{}_pred.png", "{}_pred_color.png"  # of an image's stem, as the organisers name them
COMPARISON_NAME = "sample_{}_comparison.png"  # k = 0, 1, ... in file order: the organisers' three panels
BAR_CHART = "per_class_metrics.png"  # the organisers' per-class bars
DETAIL_NAME = "sample_{}_details.png"  # ours, beside theirs in comparisons/: with an error map and the legend
BAR_CHART_DETAIL = "per_class_test_vs_val.png"  # ours: test in both flavours next to validation, per class


# --------------------------------------------------------------------------- the best epoch


def best_index(values: Sequence[float | None], *, mode: str = "max") -> int | None:
    """Index of the best value ('max' or 'min'), NaN and None skipped, the earliest on ties; None if none is a number.

    Python's max() is not this: with a NaN first it returns the NaN, so a best epoch would depend on order.
    """
    arr = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    if np.isnan(arr).all():  # also true for no values at all
        return None
    return int(np.nanargmax(arr) if mode == "max" else np.nanargmin(arr))


def best_value(values: list[Any], *, mode: str = "max") -> float:
    """The best of an epoch series, NaN and missing values skipped (NaN when none is a number)."""
    i = best_index(values, mode=mode)
    return math.nan if i is None else float(values[i])


# --------------------------------------------------------------------------- trial records


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


def write_trial_end(folder: Path, status: str, error: str | None = None) -> None:
    """The driver's record of how a trial ended (see TRIAL_END)."""
    if folder.is_dir():
        write_json(folder / TRIAL_END, {"status": status, "error": error, "ended": time.time()})


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


# --------------------------------------------------------------------------- a sweep's tables (trials.csv, history.csv)


def collect(run_dir: Path, space: SearchSpace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials and history tables from a run folder's trial records (complete or not).

    Only the project's own JSON files are read (TRIAL_CONFIG, TRIAL_EPOCHS, TRIAL_END), never Ray's pickled
    experiment state: a results folder from elsewhere is data, not code. A trial without TRIAL_END is RUNNING
    (its sweep was interrupted).
    """
    exp_dir = Path(run_dir) / EXPERIMENT_DIR
    groups = trial_groups(exp_dir) if exp_dir.is_dir() else {}
    if not groups:
        raise SweeperError(f"{exp_dir}: no trial records here (trial folders with {TRIAL_CONFIG})")
    baseline, obj = space.baseline_point(), space.objective
    # Every trial row carries the resolved value of these (the TrainConfig default when the space
    # neither searches nor fixes one), so tables and figures never depend on what a space declares.
    config_keys = list(dict.fromkeys([*CONFIG_COLUMNS, *space.param_names, *sorted(space.fixed)]))
    trials, history = [], []
    for idx, records in groups.items():
        t = records[-1]  # the folder it ran in last
        epochs = merged_epochs(records)
        end = t.end or {}
        status = str(end.get("status") or "RUNNING")
        source = str(t.path / TRIAL_CONFIG)
        cfg = TrainConfig.from_dict({k: v for k, v in t.config.items() if k in TrainConfig.__dataclass_fields__},
                                    source=source)
        resolved = cfg.to_dict()
        vals = [r.get(space.metric) for r in epochs]
        best_i = best_index(vals, mode=space.mode)  # NaN epochs skipped; None when no epoch has a number
        score = {obj.column: vals[best_i] if best_i is not None else None,  # the objective's, by its mode
                 "best_epoch": epochs[best_i]["epoch"] if best_i is not None else None,
                 obj.last_column: vals[-1] if vals else None}
        # phase 1's val IoU (0.2971's metric) and the dataset-level mIoU are always there, each its best epoch's
        for m in ("val_iou", "val_miou"):
            if f"best_{m}" not in score:
                score.update({f"best_{m}": best_value([r.get(m) for r in epochs]),
                              f"last_{m}": epochs[-1].get(m) if epochs else None})
        err = (end.get("error") or "error") if status == "ERROR" else None
        row = {"trial": idx, "trial_id": t.trial_id, "status": status, "baseline": is_baseline(t.config, baseline),
               # a searched param that its `when` switched off stays empty; anything else is as the trial ran
               **{k: (t.config.get(k) if k in space.param_names else resolved.get(k)) for k in config_keys},
               "epochs_planned": cfg.epochs, "epochs_run": len(epochs),
               # a torn last record line (a write or copy cut short) is a record missing an epoch, not ASHA's stop
               "stopped_early": status == "TERMINATED" and len(epochs) < cfg.epochs and not t.torn(),
               "incomplete": t.torn(),
               **score,
               # the trial's own count, summed over resumes (Ray's elapsed_seconds restarts on one)
               "wall_seconds": epochs[-1].get("wall_seconds", epochs[-1].get("elapsed_seconds")) if epochs else None,
               "peak_private_mb": epochs[-1].get("peak_private_mb") if epochs else None,
               "peak_shared_mb": epochs[-1].get("peak_shared_mb") if epochs else None,
               "node_id": epochs[-1].get("node_id") if epochs else None,
               "device": epochs[-1].get("device") if epochs else None,
               "gpu_share": epochs[-1].get("gpu_share") if epochs else None,
               "gpu_peak_reserved_mb": max((r["gpu_peak_reserved_mb"] for r in epochs
                                            if r.get("gpu_peak_reserved_mb") is not None), default=None),
               "error": err, "out_of_memory": is_out_of_memory(err)}
        trials.append(row)
        for r in epochs:
            h = {"trial": idx, "trial_id": t.trial_id, "baseline": row["baseline"], "optimizer": resolved["optimizer"],
                 **{k: r.get(k) for k in ("epoch", "train_loss", "val_loss", "val_iou", "val_dice", "val_acc",
                                          "val_miou", "lr", "epoch_seconds")}}
            for name, v in (r.get("val_class_iou") or {}).items():
                h[f"val_class_iou/{name}"] = v
            history.append(h)
    trials_df = pd.DataFrame(trials)
    best_col = obj.column
    if not trials_df.empty:
        base = trials_df.loc[trials_df.baseline & trials_df[best_col].notna(), best_col]
        trials_df["delta_vs_published"] = trials_df["best_val_iou"] - PUBLISHED_BASELINE_IOU  # 0.2971 is val IoU
        trials_df["delta_vs_baseline_trial"] = trials_df[best_col] - (base.iloc[0] if len(base) else math.nan)
    return trials_df, pd.DataFrame(history)


def write_tables(run_dir: Path, space: SearchSpace) -> pd.DataFrame:
    """Write trials.csv and history.csv into the run folder; return the trials table."""
    trials, history = collect(run_dir, space)
    write_text_atomic(run_dir / TRIALS_CSV, trials.to_csv(index=False))
    write_text_atomic(run_dir / HISTORY_CSV, history.to_csv(index=False))
    return trials


def summary_table(trials: pd.DataFrame, space: SearchSpace, top: int = 10) -> str:
    """The top trials as aligned text, with deltas against the baseline trial and the published figure."""
    best_col = space.objective.column
    if trials.empty:
        return "(no trials)"
    ranked = trials.sort_values(best_col, ascending=space.objective.ascending, na_position="last", kind="stable")
    df = ranked.head(top)
    if not df.baseline.any():  # the phase-1 reference row is always shown, last if it ranks below the top
        df = pd.concat([df, ranked[ranked.baseline].head(1)])
    cols = ["trial", "status", "epochs_run", best_col, "best_epoch", "best_val_iou", "best_val_miou",
            "delta_vs_baseline_trial", "delta_vs_published"]
    cols = [c for c in dict.fromkeys(cols) if c in df.columns]
    shown = df[cols].copy()
    shown["trial"] = [f"{t} (phase 1)" if b else str(t) for t, b in zip(df.trial, df.baseline)]
    dims = space_dimensions(space)
    shown["settings"] = [describe_trial(r, dims) for _, r in df.iterrows()]
    width = max(len(v) for v in shown["settings"])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}",
                           formatters={"settings": lambda v: f"  {v:<{width}}"})  # text reads left-aligned


# --------------------------------------------------------------------------- a trial in words

# How each config field reads in a description (a field not here reads 'name value').
_WORDS: dict[str, Any] = {
    "head": lambda v: f"head {v}", "optimizer": str, "lr": lambda v: f"lr {float(v):.1e}",
    "momentum": lambda v: f"momentum {float(v):.3g}", "weight_decay": lambda v: f"wd {float(v):.1e}",
    "schedule": str, "warmup_epochs": lambda v: f"warmup {float(v):.1f} epochs",
    "epochs": lambda v: f"{int(v)} epochs", "schedule_epochs": lambda v: f"schedule over {int(v)} epochs",
    "batch_size": lambda v: f"batch {int(v)}", "class_weights": lambda v: f"class weights {v}",
    "class_weight_power": lambda v: f"weight power {float(v):.2f}",
    "class_weight_max": lambda v: f"max weight {float(v):g}" if float(v) else "no weight clip",
    "label_mode": lambda v: f"{v} val labels", "train_labels": lambda v: f"{v} labels",
    "flip_prob": lambda v: f"flips p {float(v):.2f}",
}


def space_dimensions(space: SearchSpace | None, trials: pd.DataFrame | None = None) -> tuple[str, ...]:
    """What a trial's description names: the head always, then every dimension the space varies (without
    the space: every config column whose value differs between the `trials`)."""
    if space is not None:
        varied = list(space.param_names)
    else:
        varied = [c for c in CONFIG_COLUMNS if trials is not None and c in trials
                  and trials[c].nunique(dropna=True) > 1]
    return tuple(dict.fromkeys(["head", *varied]))


def describe_trial(row: Any, dims: Sequence[str]) -> str:
    """'head convnext_up, adamw, lr 6.8e-03, ..., nearest labels, flips p 0.05': a trial's value of each of
    `dims` (from `space_dimensions`), in config order, skipping one its `when` switched off; the one
    description of a trial in tables, headlines, legends and confirm rows."""
    order = [c for c in CONFIG_COLUMNS if c in dims] + [c for c in dims if c not in CONFIG_COLUMNS]
    parts = []
    for key in order:
        v = row.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            continue
        parts.append(_WORDS[key](v) if key in _WORDS else f"{key} {v}")
    return ", ".join(parts)


def run_space(run_dir: Path) -> SearchSpace | None:
    """A sweep folder's copy of its space file (its objective and dimensions), None when it has none."""
    path = Path(run_dir) / SPACE_COPY
    return load_space(path) if path.is_file() else None


def run_objective(run_dir: Path) -> Objective:
    """What ranks a sweep folder's trials: its space's metric and mode (val IoU, max, without a space copy)."""
    space = run_space(run_dir)
    return space.objective if space is not None else Objective()
