"""A sweep's tables: trials.csv (one row per trial) and history.csv (one per trial and epoch), drawn from the
trials' own records and the sweep's space, and the words that describe a trial. No torch, no Ray.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from sweeper.errors import SweeperError, is_out_of_memory
from sweeper.files import write_text_atomic
from sweeper.rundir.layout import EXPERIMENT_DIR, HISTORY_CSV, SPACE_COPY, TRIAL_CONFIG, TRIALS_CSV
from sweeper.rundir.records import is_baseline, merged_epochs, trial_groups
from sweeper.search.space import SearchSpace, load_space
from sweeper.training.config import PUBLISHED_BASELINE_IOU, TrainConfig
from sweeper.training.objective import best_index, best_value

CONFIG_COLUMNS = ("head", "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "epochs",
                  "schedule_epochs", "batch_size", "class_weights", "class_weight_power", "class_weight_max",
                  "label_mode", "train_labels", "flip_prob")  # always in trials.csv


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
               # the nodes its epochs ran on, in order, and how often it lost its node and continued elsewhere
               "node_ids": " ".join(dict.fromkeys(str(r["node_id"]) for r in epochs if r.get("node_id"))) or None,
               "node_losses": sum(len(rec.moves()) for rec in records),
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


def space_dimensions(space: SearchSpace | None, trials: pd.DataFrame | None = None) -> tuple[str, ...]:
    """What a trial's description names: the head always, then every dimension the space varies (without
    the space: every config column whose value differs between the `trials`)."""
    if space is not None:
        varied = list(space.param_names)
    else:
        varied = [c for c in CONFIG_COLUMNS if trials is not None and c in trials
                  and trials[c].nunique(dropna=True) > 1]
    return tuple(dict.fromkeys(["head", *varied]))


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
