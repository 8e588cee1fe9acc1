"""How good is the search? The best val IoU each method finds per trial-epoch, its winner confirmed (issue 30).

    PYTHONPATH=. python scripts/bench/search_efficiency.py [--data DIR] [--space phase2] [--budget 60] [--seeds 5]
        [--methods sweeper,random_asha,tpe_full,optuna_sha] [--confirm-seeds 3] [--device auto] [--work DIR]

Every method gets the same budget of trial-epochs (an epoch of any trial counts one) on the same space, data and
trainer (`sweeper.training.train.train`, through `sweeper.search.trial.run_trial`), once per sweep seed:

  sweeper           sweeper's default: TPE (constant liar with trials at once), ASHA, the phase-1 trial first
  random_asha       random sampling with the same ASHA, no phase-1 trial: what Ray Tune's default random generator
                    does (the space's own define-by-run sampler with Optuna's RandomSampler; Ray's
                    BasicVariantGenerator cannot read the space's `when` conditions without a second copy of them)
  tpe_full          sweeper's TPE and phase-1 trial without early stopping: the budget buys fewer, full-length trials
  optuna_sha        Optuna alone, one trial at a time, no Ray: sweeper's TPE with Optuna's SuccessiveHalvingPruner
                    at the space's ASHA rungs
  optuna_hyperband  the same with Optuna's HyperbandPruner (min 1 epoch, max asha.max_epochs, the same factor)

The Ray methods run `sweeper.search.driver.run_search` (their trials at the space's concurrency, or
--max-concurrent), stopped by a Ray Tune stopper when the budget is spent. The Optuna methods run their seeds in
parallel processes (as many as the Ray methods' trials at once), one trial at a time each, at the niceness Ray gives
its trial workers. Seeds run in rounds (as many seeds as trials at once, every method), each round's winners
confirmed at its end, and every finished sweep and confirmation is kept in --work: a run stopped half-way holds
whole, confirmed seeds, and run again with the same --work it continues. One sweep: scripts/bench/efficiency_sweeps.py.
Without --data: bench_setup's synthetic set (--images train images at 960x540, half as many val) and random_vits14.

Reported (results/bench/search_efficiency.json, and the figure results/figures/search_efficiency.png):
  - the anytime curve: the best val IoU found after each trial-epoch, per sweep seed, and its median, min and max
    over seeds (epochs are counted in the order they were reported; a sweep stopped past the budget by the other
    trial still running is cut at the budget);
  - each sweep's winner (its best trial within the budget) confirmed as `sweeper confirm` does: retrained with
    --confirm-seeds seeds, no early stopping (`sweeper.search.confirm.retrain`), each distinct config once, the
    phase-1 config beside them; the confirmed scores compared with `summarise_confirm`'s rule (a gain counts when
    it exceeds twice the larger seed-to-seed standard deviation), here over the sweep seeds' confirmed means;
  - wall time per sweep and per method, with the CPU model, the cores and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench/: bench_setup.py, efficiency_sweeps.py

from bench_setup import DEFAULT_IMAGES  # noqa: E402
from common import REPO, log, median, work_dir  # noqa: E402
from efficiency_sweeps import (METHODS, done_sweep, optuna_sweep, plain, prepared, ray_sweep,  # noqa: E402
                               save_sweep, search_args)

OUT = REPO / "results" / "bench" / "search_efficiency.json"
FIGURE = REPO / "results" / "figures" / "search_efficiency.png"
DEFAULT_METHODS = "sweeper,random_asha,tpe_full,optuna_sha"
CONFIRMED = "confirmed.json"  # in the work folder: each confirmed config's runs, by config


def sized_space(source: Path, size: tuple[int, int], work: Path) -> Path:
    """A copy of the space file with the image size fixed (validated as a sweep will read it)."""
    import yaml

    from sweeper.search.space import load_space

    raw = yaml.safe_load(source.read_text())
    raw["fixed"] = {**(raw.get("fixed") or {}), "image_width": size[0], "image_height": size[1]}
    path = work / f"{source.stem}-{size[0]}x{size[1]}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_space(path)
    return path


def config_key(space, config: dict[str, Any]) -> str:
    """What makes two winners the same config: the TrainConfig they train with, the seed aside."""
    from sweeper.training.config import TrainConfig

    cfg = space.to_config({k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__})
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("seed", "threads")}, sort_keys=True)


def phase1_config(ctx: dict[str, Any]) -> dict[str, Any]:
    space = ctx["space"]
    return {**space.fixed, **space.baseline_point(), **ctx["overrides"], "threads": 1}


def confirm_new(runs: list[dict[str, Any]], ctx: dict[str, Any], p) -> None:
    """Retrain, with --confirm-seeds seeds each as `sweeper confirm` does, the winners of `runs` (and the phase-1
    config) not confirmed yet in the work folder; each distinct config once. Kept in CONFIRMED."""
    from sweeper.search.confirm import retrain
    from sweeper.search.options import SearchOptions

    space, path = ctx["space"], ctx["work"] / CONFIRMED
    done = json.loads(path.read_text()) if path.is_file() else {}
    todo: dict[str, dict[str, Any]] = {}
    for config in [phase1_config(ctx), *(r["winner_config"] for r in runs if r.get("winner_config") is not None)]:
        key = config_key(space, config)
        if key not in done or len(done[key]["runs"]) != ctx["confirm_seeds"]:
            todo.setdefault(key, config)
    if not todo:
        return
    opts = SearchOptions(name=f"confirm-{len(done)}", out_root=ctx["work"], trials=len(todo),
                         max_concurrent=ctx["concurrent"], gpus_per_trial=ctx["gpus"], cpus_per_trial=1.0, seed=0)
    log(f"confirm: {len(todo)} configs x {ctx['confirm_seeds']} seeds")
    started = time.perf_counter()
    table = retrain(opts.run_dir, dict(enumerate(todo.values())), space, p.data, opts, seeds=ctx["confirm_seeds"])
    wall = round(time.perf_counter() - started, 1)
    for i, key in enumerate(todo):
        done[key] = {"config": todo[key], "batch": opts.name, "batch_wall_seconds": wall,
                     "runs": plain(table[table.trial == i].drop(columns="trial").to_dict(orient="records"))}
    path.write_text(json.dumps(plain(done), indent=1))


def confirmed(sweeps: dict[str, list[dict[str, Any]]], ctx: dict[str, Any]) -> dict[str, Any]:
    """Each sweep's winner with its confirmed mean and spread (`summarise_confirm` over the kept runs, the phase-1
    config as number 0), and the confirm runs themselves."""
    import pandas as pd

    from sweeper.search.confirm import summarise_confirm

    space = ctx["space"]
    done = json.loads((ctx["work"] / CONFIRMED).read_text())
    numbers = {config_key(space, phase1_config(ctx)): 0}
    for runs in sweeps.values():
        for run in runs:
            if run.get("winner_config") is not None:
                run["confirmed_config"] = numbers.setdefault(config_key(space, run["winner_config"]), len(numbers))
    rows = [{"trial": n, **r} for key, n in numbers.items() for r in done[key]["runs"]]
    summary = summarise_confirm(pd.DataFrame(rows), 0, space.objective).set_index("trial")
    for runs in sweeps.values():
        for run in runs:
            if "confirmed_config" in run:
                row = summary.loc[run["confirmed_config"]]
                run["confirmed"] = {"mean": row["mean"], "std": row["std"], "seeds": int(row["seeds"]),
                                    "gain_vs_phase1_config": row["gain_vs_baseline"]}
    base = summary.loc[0]
    return {"configs": len(numbers), "seeds": ctx["confirm_seeds"],
            "wall_seconds": round(sum(dict((done[k]["batch"], done[k]["batch_wall_seconds"]) for k in numbers).values()), 1),
            "phase1_config": {"mean": base["mean"], "std": base["std"], "seeds": int(base["seeds"])},
            "configs_by_number": {n: done[k]["config"] for k, n in numbers.items()}, "runs": rows}


def method_summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A method's curves across seeds (median, min, max after each trial-epoch), confirmed scores and wall time."""
    import numpy as np

    length = max(len(r["curve"]) for r in runs)
    padded = np.array([[np.nan if v is None else v for v in r["curve"]] + [np.nan] * (length - len(r["curve"]))
                       for r in runs], dtype=float)
    confirmed_means = [r["confirmed"]["mean"] for r in runs if "confirmed" in r]
    return {"label": METHODS[name].label, "seeds": [r["seed"] for r in runs],
            "curve_median": [round(float(v), 5) for v in np.nanmedian(padded, axis=0)],
            "curve_min": [round(float(v), 5) for v in np.nanmin(padded, axis=0)],
            "curve_max": [round(float(v), 5) for v in np.nanmax(padded, axis=0)],
            "sweep_score_median": median([r["winner_sweep_score"] for r in runs]),
            "confirmed_median": median(confirmed_means) if confirmed_means else None,
            "confirmed_mean": float(np.mean(confirmed_means)) if confirmed_means else None,
            "confirmed_std_over_sweep_seeds": float(np.std(confirmed_means, ddof=1)) if len(confirmed_means) > 1 else None,
            "wall_seconds": round(sum(r["wall_seconds"] for r in runs), 1),  # its sweeps one after another
            "wall_seconds_per_sweep_median": median([r["wall_seconds"] for r in runs]),
            "core_seconds_per_sweep_median": median([r["wall_seconds"] * r["trials_at_once"] for r in runs]),
            "trials_at_once": runs[0]["trials_at_once"], "runs": runs}


def decide(methods: dict[str, dict[str, Any]], objective) -> dict[str, Any]:
    """Each method's confirmed winners against the default's, by `summarise_confirm`'s rule: the sweep seeds' confirmed
    means are the samples, a gain counts when it exceeds twice the larger of the two standard deviations over seeds."""
    import pandas as pd

    from sweeper.search.confirm import summarise_confirm

    names = list(methods)
    rows = [{"trial": names.index(n), objective.column: r["confirmed"]["mean"]}
            for n, m in methods.items() for r in m["runs"] if "confirmed" in r]
    if "sweeper" not in methods or not rows:
        return {"reference": None, "note": "the default (sweeper) was not among the methods: nothing to compare with"}
    table = summarise_confirm(pd.DataFrame(rows), names.index("sweeper"), objective)
    return {"reference": "sweeper", "rule": "gain > 2 x the larger std over sweep seeds of the confirmed winner scores",
            "by_method": {names[int(t.trial)]: {"mean": t.mean, "std": t.std, "gain_vs_default": t.gain_vs_baseline,
                                                 "beats_default": t.gain_exceeds_spread, "verdict": t.verdict}
                          for t in table.itertuples()}}


def machine() -> dict[str, Any]:
    """The CPU model, cores and load: what the wall times were measured on."""
    import platform

    model = platform.processor()
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Model name")), model)
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"cpu_model": model, "cpus": os.cpu_count(), "load_average": list(os.getloadavg())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset root (default: the benchmarks' synthetic set, --images)")
    ap.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                    help=f"without --data: train images of the synthetic set, val gets half (default {DEFAULT_IMAGES}, "
                         f"bench_setup's)")
    ap.add_argument("--space", default="phase2", help="space file or shipped name (default phase2)")
    ap.add_argument("--image-size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"),
                    help="train at this size (multiples of 14), fixed in a copy of the space: the same search "
                         "at a fraction of the cost (default: the space's, phase 1's 476x266)")
    ap.add_argument("--budget", type=int, default=60, help="trial-epochs per sweep (default 60, the default sweep's)")
    ap.add_argument("--seeds", type=int, default=5, help="sweep seeds per method (default 5: seeds 0..4)")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, of {', '.join(METHODS)} "
                                                                 f"(default {DEFAULT_METHODS})")
    ap.add_argument("--confirm-seeds", type=int, default=3, help="seeds per confirmed winner (default 3, as confirm)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda (as sweeper search)")
    ap.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's on CPU, as search)")
    ap.add_argument("--work", type=Path, help="keep data, caches and sweeps here; a run stopped half-way continues "
                                              "from what it holds (default: a temp folder, removed)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--figure", type=Path, default=FIGURE)
    args = ap.parse_args()
    names = [m for m in args.methods.split(",") if m]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names or min(args.budget, args.seeds, args.confirm_seeds, args.images) < 1:
        ap.error(f"unknown method {unknown[0]!r} (known: {', '.join(METHODS)})" if unknown
                 else "--methods, --budget, --seeds, --confirm-seeds and --images need at least one")
    from sweeper.errors import SweeperError

    try:
        with work_dir(args.work, prefix="search_efficiency-") as work:
            return run(args, names, work)
    except SweeperError as e:  # a bad space, size or data folder: one line, as the CLI says it
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, names: list[str], work: Path) -> int:
    from bench_setup import make_set, private_ray

    from sweeper.cli.search import trial_overrides
    from sweeper.report.bench_figures import plot_search_efficiency
    from sweeper.report.figures import save_figure
    from sweeper.search.ray_local import cluster_nodes, trial_resources
    from sweeper.search.space import find_space, load_space

    private_ray(work)
    os.environ.setdefault("SWEEPER_CACHE", str(work / "cache"))
    made = work / f"set-{args.images}"  # made once per size in --work
    data = args.data or (made if (made / "val").is_dir() else make_set(made, args.images)[0])
    cli = search_args(["--data", str(data), "--device", args.device])
    cli.space_path = find_space(args.space)
    if args.image_size:
        cli.space_path = sized_space(cli.space_path, args.image_size, work)
    space = load_space(cli.space_path)
    gpus, concurrent = trial_resources(cluster_nodes(None), device=args.device, gpus_per_trial=None,
                                       max_concurrent=args.max_concurrent, default_concurrent=space.max_concurrent)
    overrides = trial_overrides(cli)
    p = prepared(cli, space)
    ctx = {"space": space, "budget": args.budget, "work": work, "concurrent": concurrent, "gpus": gpus,
           "overrides": overrides, "confirm_seeds": args.confirm_seeds}
    tag = {"budget": args.budget, "space": str(Path(space.source).resolve()), "data": str(Path(data).resolve())}
    result: dict[str, Any] = {"space": str(space.source), "budget_trial_epochs": args.budget,
                              "data": {"root": str(p.source.root), "synthetic": p.source.synthetic,
                                       "train_images": len(p.data.train.labels), "val_images": len(p.data.val.labels)},
                              "backbone": {"name": p.backbone.name, "trained": p.backbone.trained},
                              "metric": space.metric, "confirm_seeds": args.confirm_seeds,
                              "machine_before": machine(), "methods": {}}
    # Rounds of `concurrent` seeds, every method in each, its winners confirmed at the round's end: a run cut
    # short holds whole seeds, confirmed. The Optuna-alone sweeps of a round run side by side, one per process.
    seeds = list(range(args.seeds))
    for first in range(0, len(seeds), concurrent):
        round_seeds, finished = seeds[first:first + concurrent], []
        for name in names:
            method = METHODS[name]
            todo = [s for s in round_seeds if done_sweep(work, name, s, tag) is None]
            log(f"{name}: seeds {round_seeds}, {len(todo)} to run, {args.budget} trial-epochs each")
            if method.search is not None:
                for s in todo:
                    save_sweep(work, name, ray_sweep(name, method, s, ctx, p), tag)
            elif todo:
                with ProcessPoolExecutor(max_workers=len(todo), mp_context=get_context("spawn")) as pool:
                    for done in pool.map(optuna_sweep, [cli] * len(todo), [method.pruner] * len(todo), todo,
                                         [args.budget] * len(todo), [overrides] * len(todo)):
                        save_sweep(work, name, done, tag)
            finished += [done_sweep(work, name, s, tag) for s in round_seeds]
        confirm_new(finished, ctx, p)
    sweeps = {name: [done_sweep(work, name, s, tag) for s in seeds] for name in names}
    result["confirm"] = confirmed(sweeps, ctx)
    for name in names:
        result["methods"][name] = method_summary(name, sweeps[name])
    result["decision"] = decide(result["methods"], space.objective)
    result["machine_after"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(plain(result), indent=1))
    save_figure(plot_search_efficiency(json.loads(args.out.read_text())), args.figure)  # drawn from the saved file
    log(f"wrote {args.out} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
