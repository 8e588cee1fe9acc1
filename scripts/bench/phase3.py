"""Phase 3 against phase 2 at the same trial budget, each winner confirmed over seeds, with the cost.

    python scripts/bench/phase3.py [--seed 0] [--confirm-seeds 3] [--out results/phase3] [--phase2-run DIR]

For each of search_spaces/phase2.yaml and phase3.yaml: `sweeper search --seed S --max-concurrent 1` on the
embedded synthetic set (one trial at a time, so the sweep is repeatable), then `sweeper confirm --top 1
--seeds K` (the winner and the phase-1 baseline, K seeds each). `--phase2-run` reuses a phase-2 sweep
already run that way (scripts/bench/asha_rule.py's `own-seed0` is one: the same space, seed and concurrency)
instead of running it again. Recorded per space: the winner and its config, its sweep IoU, its confirmed
mean and spread, the baseline's confirmed mean, the trial-epochs the sweep spent, its wall minutes and the
minutes its trials trained. Writes OUT/phase3.csv and results/bench/phase3.json, and prints a table.

With synthetic data and an untrained backbone these numbers show that the machinery works (the heads, the
label and flip dimensions, the cache entries), not which settings suit the real task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py

from asha_rule import sweeper  # noqa: E402  (one CLI runner for the measurement scripts that stop on a failure)
from common import REPO  # noqa: E402

from sweeper.files import read_csv, read_json  # noqa: E402
from sweeper.rundir.layout import CONFIRM_SUMMARY_CSV, HISTORY_CSV, SWEEP_FILE, TRIALS_CSV  # noqa: E402

SHOWN = ("head", "train_labels", "flip_prob", "optimizer", "lr", "epochs", "class_weights", "batch_size")


def measure(run: Path, space: str) -> dict:
    """A sweep's winner (its top trial other than the baseline), confirmed, and what the sweep cost."""
    trials, history = read_csv(run / TRIALS_CSV), read_csv(run / HISTORY_CSV)
    summary = read_csv(run / CONFIRM_SUMMARY_CSV)
    ranked = trials[~trials.baseline & trials.best_val_iou.notna()].sort_values("best_val_iou", ascending=False)
    top = ranked.iloc[0]
    row, base = summary[summary.trial == int(top.trial)].iloc[0], summary[summary.baseline].iloc[0]
    info = read_json(run / SWEEP_FILE)
    return {"space": space, "run": str(run), "winner": int(top.trial),
            **{f"winner_{k}": (top[k] if k in top and pd.notna(top[k]) else None) for k in SHOWN},
            "winner_sweep_iou": float(top.best_val_iou), "confirmed_mean": float(row["mean"]),
            "confirmed_std": float(row["std"]), "baseline_confirmed_mean": float(base["mean"]),
            "gain_vs_baseline": float(row["gain_vs_baseline"]), "gain_exceeds_spread": bool(row["gain_exceeds_spread"]),
            "trials": len(trials), "trial_epochs": int(trials.epochs_run.sum()),
            "stopped_early": int(trials.stopped_early.sum()),
            "sweep_wall_minutes": round(info.get("wall_seconds", float("nan")) / 60, 1),
            "trial_train_minutes": round(float(history.epoch_seconds.sum()) / 60, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="TPE seed of both sweeps (default 0)")
    ap.add_argument("--confirm-seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "phase3")
    ap.add_argument("--phase2-run", type=Path, help="an existing phase-2 sweep (same seed, --max-concurrent 1) "
                                                   "with its confirm done")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for space in ("phase3", "phase2"):
        run = args.phase2_run if space == "phase2" and args.phase2_run else args.out / f"{space}-seed{args.seed}"
        if run == args.phase2_run:  # another measurement's run: wait for its confirm, never run into it
            for _ in range(120):
                if (run / CONFIRM_SUMMARY_CSV).is_file():
                    break
                time.sleep(30)
        elif not (run / CONFIRM_SUMMARY_CSV).is_file():
            if not (run / TRIALS_CSV).is_file():
                sweeper("search", "--space", space, "--seed", str(args.seed), "--name", run.name,
                        "--out", str(run.parent), "--max-concurrent", "1")
            sweeper("confirm", str(run), "--top", "1", "--seeds", str(args.confirm_seeds))
        rows.append(measure(run, space))
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "phase3.csv", index=False)
    loads = os.getloadavg()
    out = REPO / "results" / "bench" / "phase3.json"
    out.write_text(json.dumps({"seed": args.seed, "confirm_seeds": args.confirm_seeds, "load_average": loads,
                               "synthetic": True, "rows": rows}, indent=2, default=str) + "\n")
    print(table.drop(columns=["run"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"load average {loads[0]:.1f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
