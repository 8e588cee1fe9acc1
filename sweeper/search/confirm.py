"""`sweeper confirm`: is a sweep's winner better than the baseline, or lucky?

The baseline trial and the top-K trials by the space's metric are re-trained with several seeds each, as Ray
trials without early stopping (RUN_DIR/confirm/), and a gain counts only when it exceeds the seed-to-seed
spread. The configs come from the trials' own records (`sweeper.rundir.records.trial_configs`), never Ray's state.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from sweeper.data.tokens import TrainData
from sweeper.errors import SweeperError
from sweeper.files import read_csv, write_text_atomic
from sweeper.rundir.layout import (CONFIRM_CSV, CONFIRM_DIR, CONFIRM_KEY, CONFIRM_SUMMARY_CSV, EXPERIMENT_DIR,
                                   TRIAL_CONFIG, TRIALS_CSV)
from sweeper.rundir.records import read_epochs, trial_configs
from sweeper.search.driver import make_trainable
from sweeper.search.options import SearchOptions
from sweeper.search.ray_local import ray_environment, start_ray
from sweeper.search.space import SearchSpace
from sweeper.search.trial import trial_bytes
from sweeper.training.objective import MIN_SEEDS, Objective, best_value, confirm_verdict

log = logging.getLogger(__name__)


def pick_for_confirm(trials: pd.DataFrame, space: SearchSpace, top: int) -> list[int]:
    """The baseline trial plus the top-K finished trials by the space's metric."""
    best_col = space.objective.column
    done = trials[(trials.status == "TERMINATED") & trials[best_col].notna()]
    base = done[done.baseline].trial.tolist()[:1]
    if not base:
        raise SweeperError("the sweep has no finished baseline trial (trial 0) to compare against")
    others = done[~done.baseline].sort_values(best_col, ascending=space.objective.ascending,
                                              kind="stable").trial.tolist()[:top]
    return base + others


def summarise_confirm(runs: pd.DataFrame, baseline_trial: int, objective: Objective = Objective()) -> pd.DataFrame:
    """Per config: mean, std, min, max over seeds of the objective; gain over the baseline's mean (positive =
    better, by the objective's mode); whether it beats the noise. Runs with status ERROR are left out.

    A gain counts as real when it is larger than twice the larger of the two seed-to-seed standard deviations.
    When every seed of the baseline failed there is nothing to gain over: one warning line, the other
    configs' rows kept with no gain. With fewer than two seeds (of the config or of the baseline) there is no
    spread: std is empty, gain_exceeds_spread is empty (not False, not True) and the verdict says it cannot tell.
    """
    ok = runs[runs.status != "ERROR"] if "status" in runs else runs
    g = ok.groupby("trial")[objective.column]
    out = pd.DataFrame({"seeds": g.size(), "mean": g.mean(), "std": g.std(ddof=1), "min": g.min(),
                        "max": g.max()}).reset_index()
    base = out[out.trial == baseline_trial]
    if base.empty:
        errors = runs[runs.trial == baseline_trial].get("error", pd.Series(dtype=object)).dropna()
        why = f" ({errors.iloc[0]})" if len(errors) else ""
        log.warning("confirm: every seed of the baseline trial %d failed%s: no gain can be measured; "
                    "the other configs' rows are kept", baseline_trial, why)
    ref_mean, ref_std = (base["mean"].iloc[0], base["std"].iloc[0]) if len(base) else (np.nan, np.nan)
    out["baseline"] = out.trial == baseline_trial
    out["gain_vs_baseline"] = objective.gain(out["mean"], ref_mean)
    out["noise"] = np.maximum(out["std"], ref_std)  # NaN where either has a single seed
    base_seeds = int(base["seeds"].iloc[0]) if len(base) else 0
    judged = (out.seeds >= MIN_SEEDS) & (base_seeds >= MIN_SEEDS)
    exceeds = (out.gain_vs_baseline > 2 * out.noise) & ~out.baseline
    out["gain_exceeds_spread"] = pd.Series([bool(x) if ok else None for x, ok in zip(exceeds, judged)],
                                           index=out.index, dtype=object)
    out["verdict"] = [confirm_verdict(baseline=b, seeds=int(n), baseline_seeds=base_seeds, exceeds=x,
                                      has_gain=pd.notna(gain))
                      for b, n, x, gain in zip(out.baseline, out.seeds, out.gain_exceeds_spread,
                                               out.gain_vs_baseline)]
    return out


def run_confirm(run_dir: Path, space: SearchSpace, data: TrainData, opts: SearchOptions, *, top: int,
                seeds: int, progress: bool = True) -> pd.DataFrame:
    """Re-train the baseline and the top-K configs with `seeds` seeds each, as Ray trials (no early stopping)."""
    run_dir = Path(run_dir).resolve()
    trials_path = run_dir / TRIALS_CSV
    if not trials_path.is_file():
        raise SweeperError(f"{run_dir}: no {TRIALS_CSV}; run or resume the sweep first")
    picks = pick_for_confirm(read_csv(trials_path), space, top)
    configs = trial_configs(run_dir)
    missing = [t for t in picks if t not in configs]
    if missing:
        raise SweeperError(f"{run_dir / EXPERIMENT_DIR}: no {TRIAL_CONFIG} for trial(s) "
                           f"{', '.join(map(str, missing))}: their configs are unknown")
    runs = retrain(run_dir, {t: configs[t] for t in picks}, space, data, opts, seeds=seeds)
    write_text_atomic(run_dir / CONFIRM_CSV, runs.to_csv(index=False))
    summary = summarise_confirm(runs, picks[0], space.objective)
    write_text_atomic(run_dir / CONFIRM_SUMMARY_CSV, summary.to_csv(index=False))
    return summary


def retrain(run_dir: Path, configs: dict[int, dict], space: SearchSpace, data: TrainData, opts: SearchOptions, *,
            seeds: int) -> pd.DataFrame:
    """Train each config (by its number) with seeds 0..seeds-1, as Ray trials without early stopping, into
    RUN_DIR/confirm/ (replaced whole); one row per run: its number, seed, status, epochs and best scores."""
    ray_environment()
    from ray import tune

    grid = [{**configs[t], **space.objective.trial_keys(), "seed": s, CONFIRM_KEY: t}
            for t in configs for s in range(seeds)]
    start_ray(opts, data_bytes=trial_bytes(data))
    trainable = make_trainable(data, opts)
    shutil.rmtree(run_dir / CONFIRM_DIR, ignore_errors=True)  # a confirm is re-run whole, never mixed with an old one
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(max_concurrent_trials=opts.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=CONFIRM_DIR, storage_path=str(run_dir), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    results = tuner.fit()
    rows = []
    for r in results:
        cfg = r.config["run"]
        hist = read_epochs(Path(r.path))  # the trial's own record of its epochs
        vals = [h[space.metric] for h in hist if h.get(space.metric) is not None]
        rows.append({"trial": cfg[CONFIRM_KEY], "seed": cfg["seed"], "status": "ERROR" if r.error else "TERMINATED",
                     "epochs_run": len(hist),
                     # the objective's column, then phase 1's val IoU and the mIoU (each its best epoch's)
                     **{f"best_{m}": best_value([h.get(m) for h in hist]) for m in ("val_iou", "val_miou")},
                     space.objective.column: best_value(vals, mode=space.mode),
                     "error": str(r.error).splitlines()[0] if r.error else None})
    return pd.DataFrame(rows).sort_values(["trial", "seed"])
