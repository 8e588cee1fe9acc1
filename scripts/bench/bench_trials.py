"""Overhead and memory: small in-process sweeps (Ray already up) that time and weigh the trials themselves.

  overhead  Ray + Optuna + checkpoint cost of a trial that does almost no work, and the start-up of a
            sweep (ray.init, then the first trial)
  memory    peak private/shared memory of identical phase-1 probe trials, one and two at once, at two
            cache sizes: a copied cache would grow private memory, a shared one grows shared memory only
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench_setup import BACKBONE, EMBED_DIM, GRID, HEIGHT, PHASE2, WIDTH, Bench
from bench_sweep import trial_spans
from common import log, median, token_bytes

TINY = (28, 56)  # px: the near-empty trials' image size (one 2x4 token grid)


def write_space(path: Path, *, trials: int, concurrent: int, params: dict[str, Any] | None = None) -> Path:
    """phase2.yaml with epochs fixed to 1 (or other params), as a file load_space checks."""
    raw = yaml.safe_load(PHASE2.read_text())
    raw["params"] = params if params is not None else {k: v for k, v in raw["params"].items() if k != "epochs"}
    raw["fixed"] = {**(raw.get("fixed") or {}), "epochs": 1}
    raw.update(trials=trials, max_concurrent=concurrent, asha={**raw["asha"], "max_epochs": 1, "grace_period": 1})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def search_options(work: Path, name: str, *, trials: int, concurrent: int):
    """A CPU sweep's options: one CPU per trial, seed 0."""
    from sweeper.search.options import SearchOptions

    return SearchOptions(name=name, out_root=work, trials=trials, max_concurrent=concurrent, gpus_per_trial=0.0,
                         cpus_per_trial=1.0, seed=0)


def sweep_once(work: Path, name: str, data, *, trials: int, concurrent: int, size: tuple[int, int],
               params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One in-process `run_search` (Ray already up); wall time, the trials table, trial spans."""
    from sweeper.rundir.layout import EXPERIMENT_DIR
    from sweeper.search.tables import write_tables
    from sweeper.search.space import load_space
    from sweeper.search.driver import run_search

    space = load_space(write_space(work / f"{name}.yaml", trials=trials, concurrent=concurrent, params=params))
    opts = search_options(work, name, trials=trials, concurrent=concurrent)
    called = time.time()  # trial spans are wall-clock stamps
    t = time.perf_counter()
    table = run_search(space, data, opts, trial_overrides={"image_height": size[0], "image_width": size[1]},
                       progress=False)
    wall = time.perf_counter() - t
    t = time.perf_counter()
    write_tables(opts.run_dir, space)  # what run_search spends on the tables after the last trial
    tables_s = time.perf_counter() - t
    return {"called": called, "wall_s": wall, "tables_s": tables_s, "table": table,
            "spans": trial_spans(opts.run_dir / EXPERIMENT_DIR)}


def start_interval(spans: list[dict[str, float]]) -> float:
    """Mean seconds from one trial's start to the next (whole-second stamps: +-1 s over the whole span)."""
    return (spans[-1]["start"] - spans[0]["start"]) / (len(spans) - 1)


def overhead(b: Bench) -> dict[str, Any]:
    """Ray start, first-trial start and the time per near-empty trial (1 image, 1 epoch, 28x56)."""
    from sweeper.data.synth import generate as synth
    from sweeper.model.backbone import create_backbone
    from sweeper.training.config import LabelMode
    from sweeper.data.cache import load_train_data
    from sweeper.search.ray_local import start_ray

    work, trials = b.work, b.plan.overhead_trials
    root = synth.generate(work / "tiny-set", train=1, val=1, test=0, size=(112, 56))
    data = load_train_data(root, create_backbone(BACKBONE), height=TINY[0], width=TINY[1],
                           label_mode=LabelMode.PHASE1, cache_root=work / "tiny-cache", show_progress=False)
    t = time.perf_counter()
    start_ray(search_options(work, "-", trials=1, concurrent=1))  # run_search's own start, timed apart
    ray_init_s = time.perf_counter() - t
    serial = sweep_once(work, "ovh-serial", data, trials=trials, concurrent=1, size=TINY)
    pair = sweep_once(work, "ovh-pair", data, trials=trials, concurrent=2, size=TINY)
    in_trial = median([x["seconds"] for x in serial["spans"]])  # Ray's time_total_s: setup, 1 tiny epoch, report
    first_trial_start = serial["spans"][0]["start"] - serial["called"]  # Tuner + Optuna set-up, actor start
    per_trial_serial = start_interval(serial["spans"])
    return {
        "trials": trials, "ray_init_s": ray_init_s,
        "sweep_startup_s": ray_init_s + first_trial_start,  # ray.init, then the first trial starts
        "first_trial_start_s": first_trial_start,  # +-1 s (whole-second stamps)
        "per_trial_s_serial": per_trial_serial,  # one trial start to the next, one at a time
        "per_trial_s_two_at_once": start_interval(pair["spans"]),  # the same, two at a time (the CPU default)
        "in_trial_s_median": in_trial,  # the part of per_trial_s_serial that runs inside the trial
        "between_trials_s": per_trial_serial - in_trial,  # Ray + Optuna between one trial's end and the next start
        "serial_wall_s": serial["wall_s"], "pair_wall_s": pair["wall_s"], "tables_s": serial["tables_s"],
        "tiny_trial_memory_mb": serial["table"][["peak_private_mb", "peak_shared_mb"]].median().to_dict(),
    }


def random_cache(n: int, rng: np.random.Generator):
    """TrainData of n train and n/4 val images of random tokens and labels at the training size."""
    from sweeper.data.tokens import TrainData

    n_val = max(1, n // 4)
    return TrainData.from_arrays(
        train_tokens=rng.standard_normal((n, *GRID, EMBED_DIM), dtype=np.float32),
        train_labels=rng.integers(0, 10, (n, HEIGHT, WIDTH), dtype=np.uint8),
        val_tokens=rng.standard_normal((n_val, *GRID, EMBED_DIM), dtype=np.float32),
        val_labels=rng.integers(0, 10, (n_val, HEIGHT, WIDTH), dtype=np.uint8))


def probe(work: Path, label: str, data) -> dict[str, Any]:
    """Two identical phase-1 trials (batch 2, 1 epoch) on `data`, one then two at once; their memory."""
    params = {"lr": {"type": "categorical", "choices": [1.0e-4]}}  # two identical phase-1 trials
    entry: dict[str, Any] = {"images": len(data.train.labels) + len(data.val.labels),
                             "cache_mb": token_bytes(data) / 2**20, "train_labels_mb": data.train.labels.nbytes / 2**20}
    for concurrent in (1, 2):
        r = sweep_once(work, f"mem-{label}-{concurrent}", data, trials=2, concurrent=concurrent,
                       size=(HEIGHT, WIDTH), params=params)
        first, second = r["spans"]
        entry[f"x{concurrent}"] = {
            "private_mb": r["table"].peak_private_mb.tolist(), "shared_mb": r["table"].peak_shared_mb.tolist(),
            # ru_maxrss: also counts transients freed before an epoch ended (private/shared are sampled then)
            "peak_rss_mb": [x["peak_rss_mb"] for x in r["spans"]],
            "overlapped": bool(second["start"] < first["end"] - 1), "wall_s": r["wall_s"]}
    log(f"  memory probe {label}: cache {entry['cache_mb']:.0f} MB, "
        f"private {entry['x2']['private_mb']} MB, shared {entry['x2']['shared_mb']} MB (two at once)")
    return entry


def memory_probe(b: Bench) -> dict[str, Any]:
    """Phase-1-config trials on random cached tokens of two sizes, one and two at once; growth per cache MB."""
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {label: probe(b.work, label, random_cache(n, rng))
                           for label, n in zip(("small", "big"), b.plan.probe_images)}
    small, big = out["small"], out["big"]
    d_cache = big["cache_mb"] - small["cache_mb"]
    two = big["x2"]
    # ~0: the cache is not copied into the trial; ~1: the trial maps the object store's copy
    out["private_growth_per_cache_mb"] = (median(two["private_mb"]) - median(small["x2"]["private_mb"])) / d_cache
    out["shared_growth_per_cache_mb"] = (median(two["shared_mb"]) - median(small["x2"]["shared_mb"])) / d_cache
    out["two_trial_memory_mb"] = sum(two["private_mb"]) + max(two["shared_mb"])  # shared pages counted once
    out["two_trial_cache_mb"] = big["cache_mb"]
    return out


def describe_overhead(o: dict[str, Any]) -> list[str]:
    """The overhead figures in one line."""
    return [f"overhead: ray.init {o['ray_init_s']:.1f} s, first trial starts {o['first_trial_start_s']:.1f} s later; "
            f"a near-empty trial every {o['per_trial_s_serial']:.2f} s one at a time ({o['in_trial_s_median']:.2f} s "
            f"of it inside the trial), every {o['per_trial_s_two_at_once']:.2f} s two at a time"]


def describe_memory(m: dict[str, Any]) -> list[str]:
    """The memory probe's figures in two lines."""
    return [f"memory: probe trials (phase-1 config) private {m['big']['x2']['private_mb'][0]:.0f} MB, shared "
            f"{m['big']['x2']['shared_mb'][0]:.0f} MB with a {m['big']['cache_mb']:.0f} MB cache",
            f"  private/shared MB per trial grows {m['private_growth_per_cache_mb']:.2f} / "
            f"{m['shared_growth_per_cache_mb']:.2f} per MB of cache"]
