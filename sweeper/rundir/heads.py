"""A run's saved heads: which one to score or export, with its weights, config and validation record.

A baseline run keeps its final head (segmentation_head.pth, as phase 1 does). A sweep's checkpoint of each
trial keeps its latest state (for resume) and the head of its best epoch (the epoch its trials.csv score
comes from); `load_run_head` picks a trial ('best' = the best by the sweep's objective, e.g. the highest
best_val_iou; refused when that trial's checkpoint is gone) and, by default, that best epoch's head, reading
only the trials' own records and checkpoints (never Ray's pickled state). `sweeper evaluate` and `sweeper
export` both pick their head here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sweeper import files
from sweeper.data.classes import CLASS_NAMES, NUM_CLASSES
from sweeper.errors import SweeperError
from sweeper.files import write_atomic
from sweeper.model.head import create_head
from sweeper.rundir import layout
from sweeper.rundir.layout import (BEST_KEY, EXPERIMENT_DIR, HISTORY_CSV, STATE_FILE, SWEEP_FILE, TRIAL_CONFIG,
                                   TRIALS_CSV)
from sweeper.rundir.records import TrialRecord, latest_checkpoint, run_objective, trial_groups
from sweeper.training.config import TrainConfig

log = logging.getLogger(__name__)

EPOCH_CHOICES = ("best", "last")  # which of a sweep trial's kept heads to score: its best epoch's or its latest


@dataclass(frozen=True)
class RunHead:
    """A run folder's chosen head and what is known about how it was trained."""

    run_dir: Path
    kind: str  # 'baseline' or 'sweep'
    label: str  # 'baseline' or 'trial-N': the default output subfolder
    trial: int | None  # the trials.csv 'trial' number (sweeps only)
    trial_id: str | None  # Ray's trial id (sweeps only)
    weights_file: Path  # segmentation_head.pth or a checkpoint's state.pt
    config: TrainConfig
    inputs: dict[str, Any]  # the run's 'backbone', 'data' and 'cache' records
    validation: dict[str, Any] | None  # val scores of these weights: source, epoch, val_iou, val_miou, class_iou
    selection: dict[str, Any]  # how the head was chosen (sweeps: best_val_iou, best_epoch, ...)
    state: dict[str, torch.Tensor] = field(repr=False)


def _load_state(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file: all mean the same to the user
        raise SweeperError(f"{path}: not a readable torch checkpoint ({type(e).__name__})") from None


def _config(values: dict[str, Any], source: str) -> TrainConfig:
    """A TrainConfig from recorded values, ignoring keys that are not config fields (Ray adds none today)."""
    known = {k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig.from_dict(known, source=source)


def _validation(record: dict[str, Any], source: str) -> dict[str, Any]:
    """An epoch record (metrics.jsonl / checkpoint history) as the validation summary."""
    values = record.get("val_class_iou") or [None] * NUM_CLASSES
    if isinstance(values, dict):
        values = [values.get(n) for n in CLASS_NAMES]
    return {"source": source, "epoch": record.get("epoch"), "val_iou": record.get("val_iou"),
            "val_miou": record.get("val_miou"),
            "class_iou": {n: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
                          for n, v in zip(CLASS_NAMES, values)}}


def _baseline_head(run_dir: Path, trial: str | int) -> RunHead:
    if str(trial) != "best":
        raise SweeperError(f"{run_dir}: a baseline run has one head; a trial ({trial}) applies to sweeps only")
    record = files.read_json(run_dir / layout.CONFIG_FILE)
    if "config" not in record or "backbone" not in record:
        raise SweeperError(f"{run_dir / layout.CONFIG_FILE}: no 'config' and 'backbone' records in it")
    head_file = run_dir / layout.HEAD_FILE
    if not head_file.is_file():
        raise SweeperError(f"{run_dir}: no {layout.HEAD_FILE} (did the run finish?)")
    metrics = run_dir / layout.METRICS_FILE
    history = files.read_jsonl(metrics) if metrics.is_file() else []
    # Phase 1 saves the final head, so its validation scores are the last epoch's.
    validation = _validation(history[-1], layout.METRICS_FILE) if history else None
    return RunHead(run_dir=run_dir, kind="baseline", label="baseline", trial=None, trial_id=None,
                   weights_file=head_file, config=_config(record["config"], str(run_dir / layout.CONFIG_FILE)),
                   inputs={k: record.get(k) or {} for k in ("backbone", "data", "cache")},
                   validation=validation, selection={"by": "the run's final head"},
                   state=_load_state(head_file))


def _history_validation(run_dir: Path, trial: int, epoch: int | None) -> dict[str, Any] | None:
    """A trial's val scores at `epoch` (its last when None) from history.csv."""
    path = run_dir / HISTORY_CSV
    if not path.is_file():
        return None
    df = files.read_csv(path)
    if df.empty:
        return None
    if not {"trial", "epoch"} <= set(df.columns):
        raise SweeperError(f"{path}: missing column(s) trial and epoch")
    rows = df[df["trial"] == trial]
    if epoch is not None:
        rows = rows[rows["epoch"] == epoch]
    if rows.empty:
        return None
    row = rows.sort_values("epoch").iloc[-1].to_dict()
    prefix = "val_class_iou/"
    values = [row.get(prefix + n) for n in CLASS_NAMES]
    record = {"epoch": int(row["epoch"]), "val_iou": row.get("val_iou"), "val_miou": row.get("val_miou"),
              "val_class_iou": [None if v is None or pd.isna(v) else float(v) for v in values]}
    return _validation(record, HISTORY_CSV)


def _best_without_checkpoint(exp_dir: Path, records: list[TrialRecord] | None, row: dict[str, Any],
                             fallback: int, column: str) -> str:
    """The one line refusing 'best' when the best trial's checkpoint is gone: the missing file (or folder) and
    the --trial that would work."""
    number = int(row["trial"])
    if records:
        where = f"{records[-1].path}/checkpoint_*/{STATE_FILE}: missing"
    else:
        where = f"{exp_dir}: no folder of trial {number} (Ray trial id {row['trial_id']})"
    return (f"{where}, so the best trial ({number}, {column} {float(row[column]):.4f}) cannot be scored; "
            f"--trial {fallback} is the best trial with a checkpoint")


def _sweep_head(run_dir: Path, trial: str | int, epoch: str = "best") -> RunHead:
    sweep = files.read_json(run_dir / SWEEP_FILE)
    table = files.read_csv(run_dir / TRIALS_CSV)
    missing = {"trial", "trial_id"} - set(table.columns)
    if missing:
        raise SweeperError(f"{run_dir / TRIALS_CSV}: missing column(s) {', '.join(sorted(missing))}")
    exp_dir = run_dir / EXPERIMENT_DIR
    # the trials' own records (config.json), never Ray's pickled state: a results folder is data, not code
    groups = trial_groups(exp_dir) if exp_dir.is_dir() else {}
    checkpoints: dict[int, tuple[dict[str, Any], TrialRecord, Path]] = {}
    for row in table.to_dict("records"):
        found = latest_checkpoint(groups.get(int(row["trial"]), []))
        if found is not None:
            checkpoints[int(row["trial"])] = (row, *found)
    valid = ", ".join(str(t) for t in sorted(checkpoints)) or "none"
    objective = run_objective(run_dir)  # the sweep's metric and mode: what 'best' means
    if objective.column not in table.columns:
        raise SweeperError(f"{run_dir / TRIALS_CSV}: no {objective.column} column (the objective of "
                           f"{run_dir / layout.SPACE_COPY})")
    if str(trial) == "best":
        if not checkpoints:
            raise SweeperError(f"{run_dir}: no trial has a checkpoint under {exp_dir}")

        rows = {int(r["trial"]): r for r in table.to_dict("records")}

        def score(t: int) -> tuple[float, int]:
            v = rows[t].get(objective.column)
            gain = -math.inf if v is None or pd.isna(v) else objective.gain(float(v), 0.0)  # larger is better
            return (gain, -t)  # ties: the lower trial number

        number = max(rows, key=score)
        if number not in checkpoints and score(number)[0] > -math.inf:
            # another trial's head would not be the one trials.csv and the report call best: refuse, say what works
            raise SweeperError(_best_without_checkpoint(exp_dir, groups.get(number), rows[number],
                                                        max(checkpoints, key=score), objective.column))
        number = number if number in checkpoints else max(checkpoints, key=score)
    else:
        try:
            number = int(str(trial))
        except ValueError:
            raise SweeperError(f"trial '{trial}' is not a trial number; trials with a checkpoint: {valid} "
                               f"(or 'best')") from None
        if number not in checkpoints:
            why = "has no checkpoint" if number in set(table["trial"].astype(int)) else "does not exist"
            raise SweeperError(f"{run_dir}: trial {number} {why}; trials with a checkpoint: {valid} (or 'best')")
    row, tdir, state_file = checkpoints[number]
    state = _load_state(state_file)
    if not isinstance(state, dict) or "head" not in state:
        raise SweeperError(f"{state_file}: no 'head' state dict in this checkpoint")
    history = state.get("history") or []
    last_epoch = history[-1].get("epoch") if history else None
    best = state.get(BEST_KEY)
    use_best = epoch == "best" and isinstance(best, dict) and "head" in best
    if epoch == "best" and not use_best:
        log.info("trial %d: its checkpoint keeps no best-epoch head (written before best heads were kept): "
                 "scoring its latest epoch", number)
    head_state, head_epoch = (best["head"], int(best["epoch"])) if use_best else (state["head"], last_epoch)
    source = f"{state_file.parent.name}/{STATE_FILE}"
    record = next((r for r in history if r.get("epoch") == head_epoch), None)
    # the validation figures are those of the scored head's own epoch
    validation = (_validation(record, source) if record is not None
                  else _history_validation(run_dir, number, head_epoch))
    best_epoch = row.get("best_epoch")
    selection = {"by": objective.column if str(trial) == "best" else "trial number",
                 "objective": {"metric": objective.metric, "mode": objective.mode},
                 objective.column: row.get(objective.column),
                 "best_epoch": None if best_epoch is None or pd.isna(best_epoch) else int(best_epoch),
                 "weights": "best epoch" if use_best else "latest epoch",
                 "epoch": head_epoch if head_epoch is not None else (validation or {}).get("epoch"),
                 "checkpoint_epoch": last_epoch if last_epoch is not None else (validation or {}).get("epoch"),
                 "status": row.get("status"), "baseline": bool(row.get("baseline", False))}
    if selection["best_epoch"] is not None and selection["epoch"] not in (None, selection["best_epoch"]):
        log.info("trial %d: scoring epoch %s (%s); its best %s was at epoch %s",
                 number, selection["epoch"], selection["weights"], objective.label, selection["best_epoch"])
    return RunHead(run_dir=run_dir, kind="sweep", label=f"trial-{number}", trial=number,
                   trial_id=str(row["trial_id"]), weights_file=state_file,
                   config=_config(tdir.config, str(tdir.path / TRIAL_CONFIG)),
                   inputs={k: sweep.get(k) or {} for k in ("backbone", "data", "cache")},
                   validation=validation, selection=selection, state=head_state)


def load_run_head(run_dir: Path, *, trial: str | int = "best", epoch: str = "best") -> RunHead:
    """The head of a baseline run folder, or of a sweep's trial ('best' = best by the sweep's objective).

    For a sweep trial, `epoch` picks its best epoch's head ('best', the epoch its trials.csv score is from)
    or its latest ('last'). A baseline run keeps only its final head, as phase 1 does.
    """
    if epoch not in EPOCH_CHOICES:
        raise SweeperError(f"epoch: expected one of {', '.join(EPOCH_CHOICES)}, got {epoch!r}")
    run_dir = Path(run_dir)
    if (run_dir / SWEEP_FILE).is_file() and (run_dir / TRIALS_CSV).is_file():
        return _sweep_head(run_dir, trial, epoch)
    if (run_dir / layout.CONFIG_FILE).is_file():
        return _baseline_head(run_dir, trial)
    raise SweeperError(f"{run_dir}: not a run folder (expected {layout.CONFIG_FILE} + {layout.HEAD_FILE} from "
                       f"'baseline', or {SWEEP_FILE} + {TRIALS_CSV} from 'search')")


def build_head(run: RunHead, *, in_channels: int) -> nn.Module:
    """The run's head architecture with its saved weights, in eval mode."""
    head = create_head(run.config.head, in_channels=in_channels, num_classes=NUM_CLASSES)
    try:
        head.load_state_dict(run.state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise SweeperError(f"{run.weights_file}: weights do not fit head '{run.config.head}' on a "
                           f"{in_channels}-channel backbone ({first})") from None
    return head.eval()


def save_head(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a head state dict (loadable with weights_only=True)."""
    write_atomic(path, lambda f: torch.save(state, f))
