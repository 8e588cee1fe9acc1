"""Benchmark: the feature cache and the search against phase 1's backbone-in-the-loop training.

    python scripts/bench/bench.py [--images N] [--quick] [--only NAME ...]

One run on one machine, everything measured side by side in the same process (timings on a
shared machine are noisy: repeated measurements are interleaved and medians reported). Each
figure is one function in its own file:

  per_image  bench_per_image.py  backbone forward, head step, head forward, image load, checkpoint
  epoch      bench_epoch.py      a phase-1 epoch (backbone in the loop) against cached epochs
  sweep      bench_sweep.py      `sweeper search` over phase2.yaml (32 trials, cache build included)
                                 against 10 x the measured naive epoch
  overhead   bench_trials.py     Ray + Optuna + checkpoint cost of a near-empty trial; sweep start-up
  memory     bench_trials.py     one and two probe trials at two cache sizes: shared, not copied
  scale      bench_scale.py      cache, epoch and sweep projected to the full set (2857 + 317 images)

Writes results/bench/bench.json (the headline figures, their targets, and every measurement).
Everything else (data, caches, sweeps, Ray's temp dir) lives in a temp dir removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py

import bench_epoch  # noqa: E402
import bench_per_image  # noqa: E402
import bench_scale  # noqa: E402
import bench_sweep  # noqa: E402
import bench_trials  # noqa: E402
from bench_setup import DEFAULT_IMAGES, TARGETS, Bench, make_bench  # noqa: E402
from common import REPO, log, work_dir  # noqa: E402

OUT_FILE = REPO / "results" / "bench" / "bench.json"
FIGURES = ("per_image", "epoch", "sweep", "overhead", "memory", "scale")  # in the order they run
NEEDS = {"scale": ("per_image", "epoch", "sweep", "overhead")}  # figures computed from others


def chosen(only: list[str] | None) -> list[str]:
    """The figures to measure: --only's and those they are computed from, in FIGURES order."""
    want = set(only or FIGURES)
    for name in list(want):
        want.update(NEEDS.get(name, ()))
    return [f for f in FIGURES if f in want]


def measure(b: Bench, names: list[str]) -> dict[str, Any]:
    """The chosen figures, by their report keys. The epochs are measured on both sides of the sweep, so
    that the naive run it is compared with saw the machine's load before and after it."""
    got: dict[str, Any] = {}
    if "per_image" in names:
        log("per-image costs")
        got["per_image"] = bench_per_image.per_image_costs(b)
    if "epoch" in names:
        log("epochs: naive vs cached")
        epochs = bench_epoch.EpochBench(b)
        epochs.measure(b.plan.epoch_repeats, "before")
    if "sweep" in names:
        log(f"sweep: {b.plan.sweep_trials} trials of phase2.yaml, cache included")
        got["sweep"] = bench_sweep.timed_sweep(b)
    if "epoch" in names:
        epochs.measure(b.plan.epoch_repeats, "after" if "sweep" in names else "before")
        got["epoch"] = e = epochs.summary()
        log(f"  epoch ratio {e['ratio_vs_search']:.1f}x (search trial), "
            f"{e['ratio_vs_cached_baseline']:.1f}x (cached baseline)")
        if "sweep" in got:
            s = got["sweep"]
            s.update(bench_sweep.against_naive(s, e))
            log(f"  sweep {s['wall_s']:.0f} s vs naive 10 epochs {s['naive_10_epochs_s']:.0f} s: "
                f"ratio {s['ratio']:.2f}")
    if "overhead" in names or "memory" in names:
        import ray

        try:
            if "overhead" in names:
                log("overhead: near-empty trials")
                got["overhead"] = bench_trials.overhead(b)
                log("  " + bench_trials.describe_overhead(got["overhead"])[0])
            if "memory" in names:
                log("memory: one and two trials at once, two cache sizes")
                got["memory"] = bench_trials.memory_probe(b)
        finally:
            ray.shutdown()
    if "scale" in names:
        got["scale"] = bench_scale.scale(got["per_image"], got["epoch"], got["sweep"], got["overhead"])
    return got


def headline(got: dict[str, Any]) -> dict[str, Any]:
    """The target figures that this run measured: value, target, met."""
    out: dict[str, Any] = {}
    e, s, o, m = (got.get(k) for k in ("epoch", "sweep", "overhead", "memory"))
    if e:
        out["epoch_ratio"] = {"value": e["ratio_vs_search"], "target": TARGETS["epoch_ratio"],
                              "met": e["ratio_vs_search"] >= 10,
                              "also_vs_cached_baseline": e["ratio_vs_cached_baseline"]}
    if s and "ratio" in s:
        out["sweep_ratio"] = {"value": s["ratio"], "target": TARGETS["sweep_ratio"], "met": s["ratio"] <= 1.0,
                              "cpu_seconds_ratio": s["cpu_ratio"]}
    if o:
        out["overhead_s_per_trial"] = {"value": o["per_trial_s_serial"], "target": TARGETS["overhead_s_per_trial"],
                                       "met": o["per_trial_s_serial"] < 1.0,
                                       "two_at_once": o["per_trial_s_two_at_once"],
                                       "sweep_startup_s": o["sweep_startup_s"]}
    if s and e and m:
        # the timed sweep (its mix of batch sizes and optimisers, actors reused) and the probe's
        # bigger cache (identical phase-1 trials); the target must hold for both
        sweep_cache_mb = e["cache_bytes"] / 2**20  # the sweep built the same cache as the epoch bench
        out["two_trial_memory_mb"] = {
            "value": s["two_trial_memory_mb"], "cache_mb": sweep_cache_mb, "target": TARGETS["two_trial_memory_mb"],
            "met": (s["two_trial_memory_mb"] < sweep_cache_mb + 2048
                    and m["two_trial_memory_mb"] < m["two_trial_cache_mb"] + 2048),
            "probe_value": m["two_trial_memory_mb"], "probe_cache_mb": m["two_trial_cache_mb"]}
    return out


def headline_rows(h: dict[str, Any]) -> list[str]:
    """The headline as a table: figure, measured, target, met."""
    text = {
        "epoch_ratio": ("epoch ratio (naive / cached search epoch)", lambda d: f"{d['value']:.1f}x "
                        f"(vs cached baseline {d['also_vs_cached_baseline']:.1f}x)"),
        "sweep_ratio": ("sweep ratio (32-trial sweep / naive 10 ep.)", lambda d: f"{d['value']:.2f} "
                        f"(in CPU seconds {d['cpu_seconds_ratio']:.2f})"),
        "overhead_s_per_trial": ("overhead per trial (near-empty, start to start)", lambda d: f"{d['value']:.2f} s "
                                 f"(start-up {d['sweep_startup_s']:.1f} s)"),
        "two_trial_memory_mb": ("two-trial memory (sweep; probe)", lambda d: f"{d['value']:.0f} MB (cache "
                                f"{d['cache_mb']:.0f}); {d['probe_value']:.0f} MB (cache {d['probe_cache_mb']:.0f})"),
    }
    rows = [f"{'figure':<48} {'measured':<42} {'target':<16} met"]
    for key, d in h.items():
        name, value = text[key]
        rows.append(f"{name:<48} {value(d):<42} {d['target']:<16} {'yes' if d['met'] else 'NO'}")
    return rows


def print_summary(r: dict[str, Any]) -> None:
    """Every measured figure in a few lines, then the headline table."""
    describe = {"per_image": bench_per_image.describe, "epoch": bench_epoch.describe, "sweep": bench_sweep.describe,
                "overhead": bench_trials.describe_overhead, "memory": bench_trials.describe_memory,
                "scale": bench_scale.describe}
    print()
    for name in FIGURES:
        if name in r:
            print("\n".join(describe[name](r[name])))
    if r["headline"]:
        print("\n" + "\n".join(headline_rows(r["headline"])))
    n = f"{r['images']['train']} train + {r['images']['val']} val"
    print(f"\n{r['command']}{' (QUICK: not for comparison)' if r['quick'] else ''}; {n}; "
          f"{r['bench_wall_s'] / 60:.1f} min; wrote {r['out']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                    help=f"train images of the timed set; val gets half (default {DEFAULT_IMAGES})")
    ap.add_argument("--quick", action="store_true", help="a fast smoke run: fewer repeats and trials, "
                                                        "figures not fit for comparison")
    ap.add_argument("--only", nargs="+", choices=FIGURES, metavar="NAME",
                    help=f"measure these figures only (and those they need): {', '.join(FIGURES)}")
    ap.add_argument("--out", type=Path, default=OUT_FILE,
                    help=f"the JSON report (default {OUT_FILE.relative_to(REPO)})")
    ap.add_argument("--work", type=Path, help="keep the data, caches and sweeps here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    if args.images < 2:
        ap.error("--images must be >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = chosen(args.only)
    started, load_start = time.perf_counter(), os.getloadavg()
    with work_dir(args.work, prefix="bench-") as work:
        log(f"bench: work dir {work}; {os.cpu_count()} CPUs, load {load_start[0]:.1f}; torch threads "
            f"{torch.get_num_threads()}{'; QUICK' if args.quick else ''}; figures {', '.join(names)}")
        b = make_bench(work, args.images, args.quick)
        got = measure(b, names)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "quick": args.quick,
        "images": {"train": b.images[0], "val": b.images[1], "size": "960x540 synthetic, trained at 266x476"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
        "headline": headline(got), **{k: got[k] for k in FIGURES if k in got},
        "bench_wall_s": time.perf_counter() - started, "out": str(args.out),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print_summary(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
