"""How close `sweeper plan` comes: plan, then run the same sweep, in one run on this machine.

    PYTHONPATH=. python scripts/bench/plan_accuracy.py [--cases default,smoke1,smoke2] [--work DIR]

Cases (each with a fresh cache, so the plan's cache projection is tested too):
  default  the default 12-trial sweep (phase2) on the embedded synthetic set, the space's 2 at once
  smoke1   search_spaces/smoke.yaml at --max-concurrent 1
  smoke2   search_spaces/smoke.yaml at --max-concurrent 2
For each: the projected sweep time (cache included) against the measured wall time, the projected trial-epochs
against those run, and the projected peak memory of a trial against the largest measured (private memory).
Writes results/bench/plan_accuracy.json with the load average before and after each case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py

from common import REPO, log, sweeper_cli, work_dir  # noqa: E402

CASES = {"default": [], "smoke1": ["--space", "smoke", "--max-concurrent", "1"],
         "smoke2": ["--space", "smoke", "--max-concurrent", "2"]}
OUT = REPO / "results" / "bench" / "plan_accuracy.json"


def run_case(name: str, extra: list[str], work: Path) -> dict[str, Any]:
    import pandas as pd

    env = {**os.environ, "PYTHONPATH": str(REPO), "SWEEPER_CACHE": str(work / f"cache-{name}")}
    out = work / f"runs-{name}"
    load_before = os.getloadavg()
    plan_seconds = sweeper_cli("-q", "plan", "--device", "cpu", "--out", str(out), *extra, env=env)
    p = json.loads((out / "plan.json").read_text())
    sweeper_cli("-q", "search", "--device", "cpu", "--out", str(out), "--name", "sweep", *extra, env=env)
    info = json.loads((out / "sweep" / "sweep.json").read_text())
    trials = pd.read_csv(out / "sweep" / "trials.csv")
    measured_s = info["wall_seconds"]
    projected_s = p["time"]["sweep_seconds"]
    peak = float(trials.peak_private_mb.max())
    return {"plan_seconds": round(plan_seconds, 1), "options": p["options"],
            "projected_seconds": projected_s, "projected_range": p["time"]["sweep_seconds_range"],
            "measured_seconds": round(measured_s, 1), "time_ratio": round(measured_s / projected_s, 2),
            "within_30_percent": abs(measured_s / projected_s - 1) <= 0.3,
            "projected_trial_epochs": p["trial_epochs"], "measured_trial_epochs": int(trials.epochs_run.sum()),
            "projected_trial_epoch_seconds": p["time"]["trial_epoch_seconds"],
            "measured_trial_epoch_seconds_median": round(float(
                pd.read_csv(out / "sweep" / "history.csv").epoch_seconds.median()), 2),
            "projected_cache_seconds": p["time"]["cache_seconds"],
            "projected_trial_mb": p["resources"]["trial_host_mb"], "measured_trial_private_mb_max": round(peak),
            "memory_ratio": round(peak / p["resources"]["trial_host_mb"], 2),
            "within_20_percent": abs(peak / p["resources"]["trial_host_mb"] - 1) <= 0.2,
            "load_average_before": load_before, "load_average_after": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="default,smoke1,smoke2")
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    result: dict[str, Any] = json.loads(OUT.read_text()) if OUT.is_file() else {}
    result["cpus"] = os.cpu_count()
    with work_dir(args.work, prefix="plan_accuracy-") as work:
        for name in args.cases.split(","):
            log(f"plan_accuracy: {name}")
            result[name] = run_case(name, CASES[name], work)
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
