"""How close `sweeper plan` comes: plan, then run the same sweep, in one run on this machine.

    PYTHONPATH=. python scripts/bench/plan_accuracy.py [--cases default,smoke1,smoke2,bench1,bench2,bench,fullrun,full]
        [--full-data DIR]

Cases (each with a fresh cache, so the plan's cache projection is tested too):
  default  the default 12-trial sweep (phase2) on the embedded synthetic set, the space's 2 at once
  smoke1   search_spaces/smoke.yaml at --max-concurrent 1
  smoke2   search_spaces/smoke.yaml at --max-concurrent 2
  bench    scripts/bench's sweep (bench_sweep.py): phase2, 32 trials, on the bench's set (8 train + 4 val synthetic
           images at 960x540, random_vits14), the space's 2 at once
  bench1   a bench-scale sweep: phase2, 12 trials, on the bench's set, --max-concurrent 1
  bench2   the same at --max-concurrent 2
  fullrun  a full-size sweep short enough to run here: the synthetic set of the real size (--full-data), a fresh
           float16 cache (3,174 images through the backbone), the rehearsal's space at 2 trials of 1 epoch, 2 at once
  full     plan only: the full-size rehearsal's sweep (scripts/bench/rehearsal.py --full: its space, 8 trials, ASHA max
           2 epochs, float16 cache, 2 at once) on a synthetic set of the real size (--full-data, made by
           `sweeper synth DIR --train 2857 --val 317 --test 1002`), against results/bench/full.json's measured
           parts (not re-run: that sweep takes hours here)
For each: the projected sweep time (cache included) against the measured wall time, the projected trial-epochs
against those run, and the projected peak memory of a trial against the largest measured (private memory), the
median trial's, and the share of trials within 20 %.
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

BENCH_SET = ["--backbone", "random_vits14"]  # and --data: the bench's set, made once in the work folder
CASES = {"default": [], "smoke1": ["--space", "smoke", "--max-concurrent", "1"],
         "smoke2": ["--space", "smoke", "--max-concurrent", "2"],
         "bench": [*BENCH_SET, "--trials", "32"],
         "bench1": [*BENCH_SET, "--trials", "12", "--max-concurrent", "1"],
         "bench2": [*BENCH_SET, "--trials", "12", "--max-concurrent", "2"]}
OUT = REPO / "results" / "bench" / "plan_accuracy.json"
FULL = REPO / "results" / "bench" / "full.json"
FULL_MAX_EPOCHS = 2  # ASHA's max epochs in full.json's sweep (scripts/bench/rehearsal.py --full's default)


def ratio(measured: float, projected: float) -> float:
    """Measured over projected, 2 decimals."""
    return round(measured / projected, 2) if projected else float("nan")


def run_full(work: Path, data: Path) -> dict[str, Any]:
    """The plan of full.json's sweep, made now on this machine, against what that run measured."""
    from rehearsal import write_space  # the rehearsal's own space recipe

    full = json.loads(FULL.read_text())
    s, c = full["sweep"], full["cache"][full["sweep"]["cache_dtype"]]
    space = write_space(work / "full_space.yaml", s["trials"], FULL_MAX_EPOCHS)
    out = work / "runs-full"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SWEEPER_CACHE": str(work / "cache-full")}
    load_before = os.getloadavg()
    plan_seconds = sweeper_cli("-q", "plan", "--data", str(data), "--space", str(space), "--device", "cpu",
                               "--cache-dtype", s["cache_dtype"], "--max-concurrent", "2", "--out", str(out), env=env)
    p = json.loads((out / "plan.json").read_text())
    t, r = p["time"], p["resources"]
    tokens = sum(e["bytes"] for e in r["cache_entries"] if Path(e["path"]).parent.name == "tokens")
    images = p["data"]["train_images"] + p["data"]["val_images"]
    # the rehearsal's sweep reused a built cache: its wall time against the plan's without the cache build
    sweep_projected = t["sweep_seconds"] - t["cache_seconds"]
    peak = max(s["trial_peak_private_mb"])
    rows = {
        "cache_ms_per_image": (round(1000 * p["bench"]["backbone_s_per_image"], 1), c["ms_per_image"]),
        "cache_seconds": (t["cache_seconds"], c["seconds"]),
        "cache_token_bytes": (tokens, c["bytes"]),
        "object_store_bytes": (r["object_store_bytes"], s["object_store_bytes"]),
        "trial_epoch_seconds": (t["trial_epoch_seconds"], s["trial_epoch_seconds_median"]),
        "trial_epochs": (p["trial_epochs"]["expected"], s["trial_epochs"]),
        "trial_private_mb": (r["trial_host_mb"], peak),
        "sweep_seconds_without_cache": (round(sweep_projected, 1), s["wall_seconds"]),
    }
    return {"plan_seconds": round(plan_seconds, 1), "options": p["options"], "images": images,
            "measured_in": str(FULL.relative_to(REPO)), "measured_load_average": full["load_average_before_after"],
            "projected_trial_epochs": p["trial_epochs"],
            "projected_sweep_range_without_cache": [round(x - t["cache_seconds"], 1) for x in t["sweep_seconds_range"]],
            "projected_cold_epoch_seconds": t.get("cold_epoch_seconds"),
            "compare": {k: {"projected": a, "measured": b, "ratio": ratio(b, a)} for k, (a, b) in rows.items()},
            "within_30_percent": abs(ratio(s["wall_seconds"], sweep_projected) - 1) <= 0.3,
            "within_20_percent": abs(ratio(peak, r["trial_host_mb"]) - 1) <= 0.2,
            "load_average_before": load_before, "load_average_after": os.getloadavg()}


def bench_set(work: Path) -> Path:
    """The bench's synthetic set at bench.py's default size (`bench_setup.make_set`), made once in `work`."""
    from bench_setup import make_set

    root = work / "bench-set"
    return root if (root / "val").is_dir() else make_set(root)[0]


def run_case(name: str, extra: list[str], work: Path, full_data: Path) -> dict[str, Any]:
    import pandas as pd

    if BENCH_SET[0] in extra:
        extra = [*extra, "--data", str(bench_set(work))]
    if name == "fullrun":
        from rehearsal import write_space  # the rehearsal's own space recipe

        extra = ["--data", str(full_data), "--space", str(write_space(work / "fullrun_space.yaml", 2, 1)),
                 "--cache-dtype", "float16", "--max-concurrent", "2"]
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
    peaks = trials.peak_private_mb.dropna()
    peak, projected_mb = float(peaks.max()), p["resources"]["trial_host_mb"]
    history = pd.read_csv(out / "sweep" / "history.csv")
    first = history.epoch == 1
    return {"plan_seconds": round(plan_seconds, 1), "options": p["options"],
            "projected_seconds": projected_s, "projected_range": p["time"]["sweep_seconds_range"],
            "measured_seconds": round(measured_s, 1), "time_ratio": round(measured_s / projected_s, 2),
            "within_30_percent": abs(measured_s / projected_s - 1) <= 0.3,
            "projected_trial_epochs": p["trial_epochs"], "measured_trial_epochs": int(trials.epochs_run.sum()),
            "measured_epochs_by_trial": [int(x) for x in trials.sort_values("trial").epochs_run],
            "measured_stopped_early": int(trials.stopped_early.sum()),
            "projected_baseline_epoch_seconds": p["time"].get("baseline_epoch_seconds"),
            "projected_trial_epoch_seconds": p["time"]["trial_epoch_seconds"],
            "measured_trial_epoch_seconds_median": round(float(history.epoch_seconds.median()), 2),
            # a trial's first epoch against its later ones: what the plan's cold extra projects
            "projected_cold_epoch_seconds": p["time"].get("cold_epoch_seconds"),
            "measured_first_epoch_seconds_median": round(float(history[first].epoch_seconds.median()), 2),
            "measured_later_epoch_seconds_median": round(float(history[~first].epoch_seconds.median()), 2),
            "probe": p["bench"].get("trial_probe"),
            "projected_cache_seconds": p["time"]["cache_seconds"],
            "projected_trial_mb": projected_mb, "measured_trial_private_mb_max": round(peak),
            "measured_trial_private_mb_median": round(float(peaks.median())),
            "memory_ratio": round(peak / projected_mb, 2),
            "memory_ratio_median_trial": round(float(peaks.median()) / projected_mb, 2),
            "trials_within_20_percent": f"{int(((peaks / projected_mb - 1).abs() <= 0.2).sum())} of {len(peaks)}",
            "within_20_percent": abs(peak / projected_mb - 1) <= 0.2,
            "load_average_before": load_before, "load_average_after": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="default,smoke1,smoke2,bench1,bench2,bench")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--full-data", type=Path, default=Path("/work/full/data"),
                    help="the full-size synthetic set (the full case)")
    args = ap.parse_args()
    result: dict[str, Any] = json.loads(OUT.read_text()) if OUT.is_file() else {}
    result["cpus"] = os.cpu_count()
    with work_dir(args.work, prefix="plan_accuracy-") as work:
        for name in args.cases.split(","):
            log(f"plan_accuracy: {name}")
            result[name] = (run_full(work, args.full_data) if name == "full"
                            else run_case(name, CASES.get(name, []), work, args.full_data))
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
