"""Measure the ASHA rule (issue 9, item 3): which one picks the better config, and at what cost.

    python scripts/bench/asha_rule.py [--space phase2] [--sweeps 3] [--confirm-seeds 3] [--out results/asha_rule]

Two rules, same space otherwise:
  own      today's: each trial's cosine / warm-up schedule spans its own `epochs`, so at a rung a
           4-epoch trial is near the end of its decay and a 10-epoch one near its peak
  shared   every schedule spans asha.max_epochs (fixed.schedule_epochs) and `epochs` only truncates
           it: at a rung all trials are at the same point of the same schedule

For each sweep seed and rule: `sweeper search --seed S` on the synthetic set (one trial at a time, so a
sweep is repeatable), then `sweeper confirm --top 1 --seeds K`. Recorded per sweep: the winner
(trials.csv's top trial other than the baseline), its confirmed mean IoU and spread over K seeds,
the baseline's confirmed mean, and the sweep's total trial-epochs (its cost). Writes
OUT/asha_rule.csv (one row per sweep) and OUT/asha_rule.txt (those rows and the mean per rule).
Sweeps run in OUT; set SWEEPER_CACHE to keep the feature cache elsewhere.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sweeper.search.space import find_space, load_space  # noqa: E402

RULES = ("own", "shared")


def space_for(rule: str, source: Path, out: Path) -> Path:
    """The source space with the rule applied: schedule_epochs removed ('own') or set to asha.max_epochs."""
    raw = yaml.safe_load(source.read_text())
    fixed = dict(raw.get("fixed") or {})
    fixed.pop("schedule_epochs", None)
    if rule == "shared":
        fixed["schedule_epochs"] = int(raw["asha"]["max_epochs"])
    raw["fixed"] = fixed
    path = out / f"space-{rule}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_space(path)  # validated as the sweep will read it
    return path


def sweeper(*args: str) -> None:
    """Run one CLI command; stop the measurement on a failure (its stderr says why)."""
    cmd = [sys.executable, "-m", "sweeper", "-q", *args]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=REPO, env=os.environ.copy())
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}")


def measure(run: Path, rule: str, seed: int) -> dict:
    """One sweep's row: its winner, that winner's confirmed IoU, the baseline's, and the trial-epochs spent."""
    trials = pd.read_csv(run / "trials.csv")
    summary = pd.read_csv(run / "confirm_summary.csv")
    ranked = trials[~trials.baseline & trials.best_val_iou.notna()].sort_values("best_val_iou", ascending=False)
    winner = int(ranked.trial.iloc[0])
    row = summary[summary.trial == winner].iloc[0]
    base = summary[summary.baseline].iloc[0]
    return {"rule": rule, "sweep_seed": seed, "winner": winner, "winner_sweep_iou": ranked.best_val_iou.iloc[0],
            "winner_epochs": int(trials.loc[trials.trial == winner, "epochs"].iloc[0]),
            "confirmed_mean": row["mean"], "confirmed_std": row["std"], "baseline_confirmed_mean": base["mean"],
            "gain_vs_baseline": row["gain_vs_baseline"], "trial_epochs": int(trials.epochs_run.sum()),
            "stopped_early": int(trials.stopped_early.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="phase2", help="space file or shipped name (default phase2)")
    ap.add_argument("--sweeps", type=int, default=3, help="sweep seeds per rule (default 3)")
    ap.add_argument("--first-seed", type=int, default=0, help="the first sweep seed (to run seeds in parallel "
                                                               "processes, each with its own --out)")
    ap.add_argument("--confirm-seeds", type=int, default=3, help="seeds per confirmed config (default 3)")
    ap.add_argument("--trials", type=int, help="trials per sweep (default: the space's)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "asha_rule")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    source = find_space(args.space)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.sweeps):
        for rule in RULES:
            name = f"{rule}-seed{seed}"
            search = ["search", "--space", str(space_for(rule, source, args.out)), "--seed", str(seed),
                      "--name", name, "--out", str(args.out), "--max-concurrent", "1"]
            if args.trials:
                search += ["--trials", str(args.trials)]
            run = args.out / name  # a step already done is not re-run: a stopped measurement continues
            if not (run / "trials.csv").is_file():
                sweeper(*search)
            if not (run / "confirm_summary.csv").is_file():
                sweeper("confirm", str(run), "--top", "1", "--seeds", str(args.confirm_seeds))
            rows.append(measure(args.out / name, rule, seed))
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "asha_rule.csv", index=False)
    means = table.groupby("rule")[["confirmed_mean", "confirmed_std", "baseline_confirmed_mean", "trial_epochs"]].mean()
    fmt = lambda v: f"{v:.4f}"  # noqa: E731
    text = ("ASHA rule: own schedule vs shared schedule\n\n" + table.to_string(index=False, float_format=fmt)
            + "\n\nMean per rule:\n\n" + means.to_string(float_format=fmt) + "\n")
    (args.out / "asha_rule.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
