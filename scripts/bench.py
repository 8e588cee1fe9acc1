"""Benchmark: the feature cache and the search against phase 1's backbone-in-the-loop training.

    python scripts/bench.py [--images N] [--quick]

One run on one machine, everything measured side by side in the same process (timings on a
shared machine are noisy: repeated measurements are interleaved and medians reported):

  per image   backbone forward, head training step, head forward at 266x476 (ViT-S/14 shape;
              random weights cost the same as Meta's), image loading, a per-epoch checkpoint
  epoch       one phase-1 epoch with the backbone in the loop (`train` on `BackboneTokens`,
              train metrics on) against a cached epoch as search trials run it (train metrics
              off) and as the cached baseline runs it (train metrics on), same N images
  sweep       `sweeper search` over search_spaces/phase2.yaml with --trials 32, cache build
              included, against 10 x the measured naive epoch (phase 1's 10 epochs)
  overhead    Ray + Optuna + checkpoint cost of a trial that does almost no work, and the
              start-up of a sweep (ray.init, then the first trial)
  memory      peak private/shared memory of the sweep's trials (per reused trial actor), and of
              identical probe trials one and two at once at two cache sizes: a copied cache
              would grow private memory, a shared one grows shared memory only
  scale       cache size, epoch and sweep times projected to the full set (2857 train + 317 val)

Writes results/bench/bench.json (the headline figures, their targets, and every measurement).
Everything else (data, caches, sweeps, Ray's temp dir) lives in a temp dir removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

REPO = Path(__file__).resolve().parent.parent
OUT_FILE = REPO / "results" / "bench" / "bench.json"
PHASE2 = REPO / "search_spaces" / "phase2.yaml"

# ----------------------------------------------------------------------------- defaults
HEIGHT, WIDTH = 266, 476  # px, phase 1's training size
BACKBONE = "random_vits14"  # ViT-S/14 shape with seeded weights: same FLOPs as dinov2_vits14, no download
FULL_TRAIN, FULL_VAL = 2857, 317  # images in the real Duality train / val splits
SWEEP_TRIALS = 32  # trials of the timed sweep (baseline trial 0 included)
NAIVE_EPOCHS = 10  # phase 1 trains 10 epochs
TARGETS = {  # the figures the cache and the search are meant to reach
    "epoch_ratio": ">= 10",  # naive epoch / cached search-trial epoch
    "sweep_ratio": "<= 1.0",  # 32-trial sweep incl. cache / one naive 10-epoch run
    "overhead_s_per_trial": "< 1",  # Ray + Optuna + checkpoint wall per extra trial
    "two_trial_memory_mb": "< cache + 2048",  # two concurrent trials, shared pages counted once
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def repeat(fn: Callable[[], Any], n: int, warmup: int = 1) -> list[float]:
    """Wall seconds of n calls of fn after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# ----------------------------------------------------------------------------- per image


def per_image_costs(backbone, image_path: Path, repeats: int) -> dict[str, Any]:
    """Median seconds per image of the backbone, a phase-1 head step, a head forward, image loading."""
    from sweeper.data import load_image
    from sweeper.head import create_head
    from sweeper.train import RunState

    torch.manual_seed(0)
    p = backbone.patch_size
    grid = (HEIGHT // p, WIDTH // p)
    images = torch.randn(2, 3, HEIGHT, WIDTH)  # phase 1 runs the backbone on its batches of 2
    bb = repeat(lambda: backbone(images), repeats)

    head = create_head("convnext_phase1", in_channels=backbone.embed_dim, num_classes=10)
    opt = torch.optim.SGD(head.parameters(), lr=1e-4, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    tokens = torch.randn(2, *grid, backbone.embed_dim)
    labels = torch.randint(0, 10, (2, HEIGHT, WIDTH))

    def step() -> None:  # what `train` does per batch: head, bilinear upsample, CE, backward, SGD step
        head.train()
        out = F.interpolate(head(tokens), size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
        loss = criterion(out, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward() -> None:  # an eval batch: head and upsample, as `evaluate` does before the metrics
        head.eval()
        with torch.inference_mode():
            F.interpolate(head(tokens), size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False).argmax(1)

    logits = head(tokens).detach().requires_grad_(True)  # the head's output at token resolution

    def loss_only() -> None:  # the part of a step at label resolution: upsample, CE and their backward
        out = F.interpolate(logits, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
        criterion(out, labels).backward()
        logits.grad = None

    def head_only() -> None:  # eval forward without the upsample
        head.eval()
        with torch.inference_mode():
            head(tokens)

    steps = repeat(step, repeats * 2)
    losses = repeat(loss_only, repeats * 2)
    heads = repeat(head_only, repeats * 2)
    fwds = repeat(forward, repeats * 2)
    loads = repeat(lambda: load_image(image_path, height=HEIGHT, width=WIDTH), repeats * 2)

    # Every search epoch ends with a checkpoint (head + optimiser state) for resume.
    run = RunState(head=head, optimizer=opt, shuffle=torch.Generator(), metrics_shuffle=torch.Generator())
    with tempfile.TemporaryDirectory() as d:
        ckpt = repeat(lambda: torch.save(run.state_dict(), Path(d) / "state.pt"), repeats)
        ckpt_mb = (Path(d) / "state.pt").stat().st_size / 2**20
    return {
        "batch": 2, "threads": torch.get_num_threads(), "repeats": repeats,
        "backbone_forward_s": median(bb) / 2,
        "head_train_step_s": median(steps) / 2,
        "head_forward_s": median(fwds) / 2,
        "upsample_ce_fwd_bwd_s": median(losses) / 2,  # part of head_train_step_s
        "head_forward_no_upsample_s": median(heads) / 2,  # part of head_forward_s
        "image_load_s": median(loads),  # 960x540 PNG decode + resize + normalise
        "checkpoint_s": median(ckpt), "checkpoint_mb": ckpt_mb,
        "gflop_reference": {"backbone": 35, "head_train_step": 9, "head_forward": 3},  # duality_offroad.md
    }


# ----------------------------------------------------------------------------- epochs


def pixel_count_peak(data) -> float:
    """Peak bytes numpy allocates in `train_pixel_counts()` (every train() call) per byte of train labels."""
    import tracemalloc

    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        data.train_pixel_counts()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / data.train.labels.nbytes


class EpochBench:
    """Naive (backbone in the loop) vs cached epochs on the same images, interleaved; medians.

    `measure` can be called before and after the sweep, so that the naive epoch the sweep is
    compared with saw the machine's load on both sides of it.
    """

    def __init__(self, root: Path, backbone, cache_root: Path) -> None:
        from sweeper.config import LabelMode, TrainConfig
        from sweeper.features import load_train_data

        kw = dict(height=HEIGHT, width=WIDTH, label_mode=LabelMode.PHASE1, cache_root=cache_root,
                  show_progress=False)
        before = backbone.forward_count
        t = time.perf_counter()
        self.cached = load_train_data(root, backbone, **kw)
        self.build_s = time.perf_counter() - t
        self.build_images = backbone.forward_count - before
        naive = load_train_data(root, backbone, use_cache=False, **kw)
        self.runs = {
            # exactly phase 1's loop: backbone on every pass, train metrics on
            "naive": (TrainConfig(epochs=1, device="cpu"), naive),
            # what every search trial runs (phase2.yaml fixes train_metrics: false)
            "cached_search": (TrainConfig(epochs=1, device="cpu", train_metrics=False), self.cached),
            # `sweeper baseline`: the same work as phase 1, tokens from the cache
            "cached_baseline": (TrainConfig(epochs=1, device="cpu"), self.cached),
        }
        self.times: dict[str, list[float]] = {k: [] for k in self.runs}
        self.cpu: dict[str, list[float]] = {k: [] for k in self.runs}  # CPU seconds, all threads
        self.when: list[str] = []  # 'before' or 'after' the sweep, per repeat
        self.val_iou: dict[str, float] = {}

    def measure(self, repeats: int, when: str) -> None:
        from sweeper.train import train

        names = list(self.runs)
        for _ in range(repeats):
            r = len(self.when)
            for name in names[r % 3:] + names[:r % 3]:  # rotate the order so drifting load hits all alike
                cfg, data = self.runs[name]
                t, c = time.perf_counter(), time.process_time()
                result = train(cfg, data)
                self.times[name].append(time.perf_counter() - t)
                self.cpu[name].append(time.process_time() - c)
                self.val_iou[name] = result.history[0]["val_iou"]
            self.when.append(when)
            log(f"  epoch repeat {r + 1} ({when} the sweep): "
                + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in self.times.items()))

    def summary(self) -> dict[str, Any]:
        times = self.times
        med = {k: median(v) for k, v in times.items()}
        cached = self.cached
        return {
            "train_images": len(cached.train.labels), "val_images": len(cached.val.labels),
            "repeats": len(self.when), "when": self.when, "threads": torch.get_num_threads(),
            "seconds": times, "median_s": med,
            "cpu_seconds": self.cpu, "median_cpu_s": {k: median(v) for k, v in self.cpu.items()},
            "ratio_vs_search": med["naive"] / med["cached_search"],
            "ratio_vs_cached_baseline": med["naive"] / med["cached_baseline"],
            "ratio_vs_search_per_repeat": [a / b for a, b in zip(times["naive"], times["cached_search"])],
            "val_iou": self.val_iou,  # naive and cached baseline do the same work: these agree
            "cache_build_s": self.build_s, "cache_build_images": self.build_images,
            "pixel_count_peak_per_label_byte": pixel_count_peak(cached),
            "cache_bytes": int(np.asarray(cached.train.tokens.array).nbytes
                               + np.asarray(cached.val.tokens.array).nbytes),
        }


# ----------------------------------------------------------------------------- sweep


def trial_spans(exp_dir: Path) -> list[dict[str, float]]:
    """Start, end (1 s resolution), seconds, actor pid and peak memory of each trial, from its result.json."""
    spans = []
    for d in exp_dir.glob("trial_main_*"):
        rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines() if line.strip()]
        if rows:
            last = rows[-1]
            spans.append({"start": last["timestamp"] - last["time_total_s"], "end": float(last["timestamp"]),
                          "seconds": last["time_total_s"], "pid": last["pid"],  # the (reused) trial actor
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
                          "peak_private_mb": max(r["peak_private_mb"] for r in rows),
                          "peak_shared_mb": max(r["peak_shared_mb"] for r in rows)})
    return sorted(spans, key=lambda x: x["start"])


def busy_slots(spans: list[dict[str, float]], most: int) -> dict[int, float]:
    """Seconds during which k trials ran at once, from the first trial start to the last trial end.

    Ends are whole seconds, so a trial may seem to start before the one it replaces ended:
    counts above `most` (the concurrency limit) are folded into `most`.
    """
    events = sorted([(x["start"], 1) for x in spans] + [(x["end"], -1) for x in spans])
    out: dict[int, float] = {k: 0.0 for k in range(most + 1)}
    running, last = 0, events[0][0]
    for t, step in events:
        out[min(running, most)] += t - last
        running, last = running + step, t
    return out


class TreeCpu(threading.Thread):
    """CPU seconds (user + system) of a process and all its descendants, sampled from /proc.

    Ray's workers are not reaped by the driver, so getrusage(RUSAGE_CHILDREN) misses them; each
    process's counters are read every `interval` s and its last reading kept (a process that
    ends loses at most its last interval). CPU time barely changes with other jobs' load, wall
    time does: the two ratios together separate the code's cost from the machine's noise.
    """

    def __init__(self, root: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.last: dict[int, float] = {}
        self.done = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        parent, cpu = {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                text = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
            parent[int(d)] = int(fields[1])
            cpu[int(d)] = (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
        for pid in cpu:
            p = pid
            while p > 1 and p != self.root:
                p = parent.get(p, 0)
            if p == self.root:
                self.last[pid] = cpu[pid]

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join()

    def seconds(self) -> float:
        return float(sum(self.last.values()))


def timed_sweep(root: Path, work: Path, trials: int, env: dict[str, str]) -> dict[str, Any]:
    """`sweeper search` as a user runs it (own process, fresh cache, phase2.yaml); wall time and breakdown."""
    cache = work / "sweep-cache"  # empty: the sweep builds its own cache, and pays for it
    out = work / "runs"
    cmd = [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(root), "--backbone", BACKBONE,
           "--space", str(PHASE2), "--trials", str(trials), "--out", str(out), "--name", "sweep",
           "--cache-dir", str(cache)]
    log("  " + " ".join(cmd))
    launched = time.time()  # wall clock, to place the trials' whole-second stamps on the timeline
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu = TreeCpu(proc.pid)
    cpu.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t
    cpu.stop()
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{stderr[-3000:]}")
    run = out / "sweep"
    info = json.loads((run / "sweep.json").read_text())
    table = pd.read_csv(run / "trials.csv")
    history = pd.read_csv(run / "history.csv")
    cache_s = sum(json.loads(p.read_text())["seconds"] for p in (cache / "tokens").glob("*.json"))
    concurrent = int(info["options"]["max_concurrent"])
    trial_compute = float(table.wall_seconds.fillna(0).sum())  # inside train(): the head's own work
    spans = trial_spans(run / "ray")
    slots = busy_slots(spans, concurrent)
    first_start, last_end = min(x["start"] for x in spans), max(x["end"] for x in spans)
    actor_peaks: dict[str, float] = {}
    for x in spans:
        actor_peaks[str(x["pid"])] = max(actor_peaks.get(str(x["pid"]), 0.0), x["peak_private_mb"])
    return {
        "command": " ".join(cmd), "trials": len(table), "status": table.status.value_counts().to_dict(),
        "max_concurrent": concurrent, "cpus_per_trial": info["options"]["cpus_per_trial"],
        "epochs_run": int(len(history)), "stopped_early": int(table.stopped_early.sum()),
        "epochs_if_no_asha": int(table.epochs_planned.sum()),
        "wall_s": wall,
        "cpu_s": cpu.seconds(),  # CPU seconds of the whole process tree (driver, Ray, trials)
        "timeline_s": {  # the sweep's wall time, in order (whole-second trial stamps: +-1 s each)
            "launch_to_first_trial": first_start - launched,  # imports, backbone, cache, ray.init, first actor
            **{f"trials_{k}_at_once": v for k, v in sorted(slots.items(), reverse=True)},
            "last_trial_to_exit": launched + wall - last_end,  # tables, Ray shutdown
        },
        "parts_s": {
            "cache_build": cache_s,  # in launch_to_first_trial
            # the process's life outside `sweeper search`'s own timer: interpreter start and imports
            # (in launch_to_first_trial) plus exit with Ray's shutdown (in last_trial_to_exit)
            "imports_and_exit": wall - info["wall_seconds"],
        },
        # the head's own training (train()'s seconds, all trials) spread over the trial slots
        "trial_training_over_concurrency_s": trial_compute / concurrent,
        "trial_training_s_total": trial_compute,
        "first_trial_start_to_last_end_s": last_end - first_start,
        "trial_actor_s_total": float(sum(x["seconds"] for x in spans)),  # Ray's time_total_s: train() + reports
        "epoch_s_total": float(history.epoch_seconds.sum()),
        "epoch_s_median": float(history.epoch_seconds.median()),
        "driver_peak_rss_mb": info.get("driver_peak_rss_mb"),
        "trial_peak_private_mb": table.peak_private_mb.describe()[["50%", "max"]].to_dict(),
        "trial_peak_shared_mb": table.peak_shared_mb.describe()[["50%", "max"]].to_dict(),
        # Trials run in `concurrent` reused actor processes: at any time the memory in use is at most
        # each actor's largest private peak, summed, plus the shared pages (cache, libraries) once.
        "actor_peak_private_mb": actor_peaks,
        "two_trial_memory_mb": float(sum(sorted(actor_peaks.values())[-2:]) + max(x["peak_shared_mb"] for x in spans)),
        "epochs_run_per_trial": {int(k): int(v) for k, v in table.epochs_run.value_counts().sort_index().items()},
        "baseline_trial_epochs": int(table[table.baseline].epochs_run.iloc[0]) if table.baseline.any() else None,
        "best_val_iou": float(table.best_val_iou.max()),
    }


# ----------------------------------------------------------------------------- overhead and memory


def write_space(path: Path, *, trials: int, concurrent: int, params: dict[str, Any] | None = None) -> Path:
    """phase2.yaml with epochs fixed to 1 (or other params), as a file load_space checks."""
    raw = yaml.safe_load(PHASE2.read_text())
    raw["params"] = params if params is not None else {k: v for k, v in raw["params"].items() if k != "epochs"}
    raw["fixed"] = {**(raw.get("fixed") or {}), "epochs": 1}
    raw.update(trials=trials, max_concurrent=concurrent, asha={**raw["asha"], "max_epochs": 1, "grace_period": 1})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def sweep_once(work: Path, name: str, data, *, trials: int, concurrent: int, size: tuple[int, int],
               params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One in-process `run_search` (Ray already up); wall time, the trials table, trial spans."""
    from sweeper.space import load_space
    from sweeper.tune import SearchOptions, run_search, write_tables

    space = load_space(write_space(work / f"{name}.yaml", trials=trials, concurrent=concurrent, params=params))
    opts = SearchOptions(name=name, out_root=work, trials=trials, max_concurrent=concurrent, gpus_per_trial=0.0,
                         cpus_per_trial=1.0, seed=0)
    called = time.time()  # trial spans are wall-clock stamps
    t = time.perf_counter()
    table = run_search(space, data, opts, trial_overrides={"image_height": size[0], "image_width": size[1]},
                       progress=False)
    wall = time.perf_counter() - t
    t = time.perf_counter()
    write_tables(opts.run_dir, space)  # what run_search spends on the tables after the last trial
    tables_s = time.perf_counter() - t
    return {"called": called, "wall_s": wall, "tables_s": tables_s, "table": table,
            "spans": trial_spans(opts.run_dir / "ray")}


def start_interval(spans: list[dict[str, float]]) -> float:
    """Mean seconds from one trial's start to the next (whole-second stamps: +-1 s over the whole span)."""
    return (spans[-1]["start"] - spans[0]["start"]) / (len(spans) - 1)


def overhead(work: Path, trials: int) -> dict[str, Any]:
    """Ray start, first-trial start and the time per near-empty trial (1 image, 1 epoch, 28x56)."""
    from sweeper import synth
    from sweeper.backbone import create_backbone
    from sweeper.config import LabelMode
    from sweeper.features import load_train_data
    from sweeper.tune import SearchOptions, start_ray

    root = synth.generate(work / "tiny-set", train=1, val=1, test=0, size=(112, 56))
    data = load_train_data(root, create_backbone(BACKBONE), height=28, width=56, label_mode=LabelMode.PHASE1,
                           cache_root=work / "tiny-cache", show_progress=False)
    t = time.perf_counter()
    start_ray(SearchOptions(name="-", out_root=work, trials=1, max_concurrent=1, gpus_per_trial=0.0,
                            cpus_per_trial=1.0, seed=0))  # run_search's own start, timed apart
    ray_init_s = time.perf_counter() - t
    serial = sweep_once(work, "ovh-serial", data, trials=trials, concurrent=1, size=(28, 56))
    pair = sweep_once(work, "ovh-pair", data, trials=trials, concurrent=2, size=(28, 56))
    in_trial = median([x["seconds"] for x in serial["spans"]])  # Ray's time_total_s: setup, 1 tiny epoch, report
    first_trial_start = serial["spans"][0]["start"] - serial["called"]  # Tuner + Optuna set-up, actor start
    per_trial_serial = start_interval(serial["spans"])
    tiny_mem = serial["table"][["peak_private_mb", "peak_shared_mb"]].median().to_dict()
    return {
        "trials": trials, "ray_init_s": ray_init_s,
        "sweep_startup_s": ray_init_s + first_trial_start,  # ray.init, then the first trial starts
        "first_trial_start_s": first_trial_start,  # +-1 s (whole-second stamps)
        "per_trial_s_serial": per_trial_serial,  # one trial start to the next, one at a time
        "per_trial_s_two_at_once": start_interval(pair["spans"]),  # the same, two at a time (the CPU default)
        "in_trial_s_median": in_trial,  # the part of per_trial_s_serial that runs inside the trial
        "between_trials_s": per_trial_serial - in_trial,  # Ray + Optuna between one trial's end and the next start
        "serial_wall_s": serial["wall_s"], "pair_wall_s": pair["wall_s"], "tables_s": serial["tables_s"],
        "tiny_trial_memory_mb": tiny_mem,
    }


def memory_probe(work: Path, n_small: int, n_big: int) -> dict[str, Any]:
    """Phase-1-config trials (batch 2, 1 epoch) on random cached tokens of two sizes, one and two at once."""
    from sweeper.features import TrainData

    rng = np.random.default_rng(0)
    grid = (HEIGHT // 14, WIDTH // 14, 384)
    out: dict[str, Any] = {}
    for label, n in (("small", n_small), ("big", n_big)):
        n_val = max(1, n // 4)
        data = TrainData.from_arrays(
            train_tokens=rng.standard_normal((n, *grid), dtype=np.float32),
            train_labels=rng.integers(0, 10, (n, HEIGHT, WIDTH), dtype=np.uint8),
            val_tokens=rng.standard_normal((n_val, *grid), dtype=np.float32),
            val_labels=rng.integers(0, 10, (n_val, HEIGHT, WIDTH), dtype=np.uint8))
        cache_mb = (data.train.tokens.array.nbytes + data.val.tokens.array.nbytes) / 2**20
        params = {"lr": {"type": "categorical", "choices": [1.0e-4]}}  # two identical phase-1 trials
        entry: dict[str, Any] = {"images": n + n_val, "cache_mb": cache_mb,
                                 "train_labels_mb": data.train.labels.nbytes / 2**20}
        for concurrent in (1, 2):
            r = sweep_once(work, f"mem-{label}-{concurrent}", data, trials=2, concurrent=concurrent,
                           size=(HEIGHT, WIDTH), params=params)
            first, second = r["spans"]
            entry[f"x{concurrent}"] = {
                "private_mb": r["table"].peak_private_mb.tolist(), "shared_mb": r["table"].peak_shared_mb.tolist(),
                # ru_maxrss: also counts transients freed before an epoch ended (private/shared are sampled then)
                "peak_rss_mb": [x["peak_rss_mb"] for x in r["spans"]],
                "overlapped": bool(second["start"] < first["end"] - 1), "wall_s": r["wall_s"]}
        out[label] = entry
        log(f"  memory probe {label}: cache {cache_mb:.0f} MB, "
            f"private {entry['x2']['private_mb']} MB, shared {entry['x2']['shared_mb']} MB (two at once)")
    small, big = out["small"], out["big"]
    d_cache = big["cache_mb"] - small["cache_mb"]
    d_private = median(big["x2"]["private_mb"]) - median(small["x2"]["private_mb"])
    d_shared = median(big["x2"]["shared_mb"]) - median(small["x2"]["shared_mb"])
    two = big["x2"]

    out["private_growth_per_cache_mb"] = d_private / d_cache  # ~0: not copied into the trial
    out["shared_growth_per_cache_mb"] = d_shared / d_cache  # ~1: the trial maps the object store's copy
    out["two_trial_memory_mb"] = sum(two["private_mb"]) + max(two["shared_mb"])  # shared pages counted once
    out["two_trial_cache_mb"] = big["cache_mb"]
    return out


# ----------------------------------------------------------------------------- scale


def scale(costs: dict[str, Any], epochs: dict[str, Any], sweep: dict[str, Any], ovh: dict[str, Any],
          grid_bytes: int) -> dict[str, Any]:
    """Cache size, epoch and sweep times for the full dataset from the per-image and measured figures."""
    n, v = FULL_TRAIN, FULL_VAL
    bb, step, fwd, load = (costs[k] for k in ("backbone_forward_s", "head_train_step_s", "head_forward_s",
                                              "image_load_s"))
    search = n * step + v * fwd  # train pass + one fused val pass
    baseline = search + n * fwd  # + the train-metrics pass
    # phase 1: every pass loads the image and runs the backbone (train, train metrics, val loss, val metrics)
    naive = n * (2 * (load + bb) + step + fwd) + v * 2 * (load + bb + fwd)
    tn, tv = epochs["train_images"], epochs["val_images"]
    measured = {  # the same model applied to the measured N-image set: how far the projection is off
        "cached_search": epochs["median_s"]["cached_search"] / (tn * step + tv * fwd),
        "naive": epochs["median_s"]["naive"] / (tn * (2 * (load + bb) + step + fwd) + tv * 2 * (load + bb + fwd)),
    }
    # The sweep: the same trials and epochs as measured, each epoch grown by the cost model,
    # plus the fixed costs (start-up, per-trial overhead) and the bigger cache build.
    grow = (n * step + v * fwd) / (tn * step + tv * fwd)
    fixed = (sweep["timeline_s"]["launch_to_first_trial"] - sweep["parts_s"]["cache_build"]
             + sweep["timeline_s"]["last_trial_to_exit"]
             + sweep["trials"] * ovh["per_trial_s_two_at_once"])
    sweep_s = (n + v) * (load + bb) + sweep["epoch_s_total"] * grow / sweep["max_concurrent"] + fixed
    label_bytes = HEIGHT * WIDTH  # uint8 per pixel
    return {
        "sweep_s": sweep_s, "sweep_ratio": sweep_s / (NAIVE_EPOCHS * naive),
        "sweep_assumes": "the measured sweep's epochs, each grown by the cost model, trials packed perfectly",
        "labels_gb": (n + v) * label_bytes / 1e9,
        # train() counts class pixels with np.bincount, which first copies the uint8 labels to int64
        "pixel_count_transient_gb_per_trial": n * label_bytes * epochs["pixel_count_peak_per_label_byte"] / 1e9,
        "images": n + v, "token_bytes_per_image_float32": grid_bytes,
        "cache_gb_float32": (n + v) * grid_bytes / 1e9, "cache_gb_float16": (n + v) * grid_bytes / 2 / 1e9,
        "cache_build_s": (n + v) * (load + bb),
        "epoch_s": {"naive": naive, "cached_search": search, "cached_baseline": baseline},
        "epoch_ratio": {"vs_search": naive / search, "vs_cached_baseline": naive / baseline},
        "measured_over_model_at_N": measured,  # >1: the N-image epoch was slower than the per-image sum
        "threads": costs["threads"],
    }


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="train images of the timed set; val gets half (default 8)")
    ap.add_argument("--quick", action="store_true", help="a fast smoke run: fewer repeats and trials, "
                                                        "figures not fit for comparison")
    ap.add_argument("--out", type=Path, default=OUT_FILE, help=f"the JSON report (default {OUT_FILE.relative_to(REPO)})")
    ap.add_argument("--work", type=Path, help="keep the data, caches and sweeps here (default: a temp dir, removed)")
    args = ap.parse_args()
    if args.images < 2:
        ap.error("--images must be >= 2")
    quick = args.quick
    repeats = 1 if quick else 2  # epoch repeats before the sweep, and as many after it
    sweep_trials = 8 if quick else SWEEP_TRIALS
    overhead_trials = 6 if quick else 16
    probe = (4, 16) if quick else (8, 96)  # images (train) of the small and big memory-probe caches

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    # A private Ray temp dir: a plain ray.init() joins whatever cluster the machine-wide
    # /tmp/ray/ray_current_cluster names, and other jobs on this machine may have one.
    os.environ["RAY_TMPDIR"] = str(work / "ray-tmp")
    (work / "ray-tmp").mkdir(exist_ok=True)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    load_start = os.getloadavg()
    log(f"bench: work dir {work}; {os.cpu_count()} CPUs, load {load_start[0]:.1f}; torch threads "
        f"{torch.get_num_threads()}{'; QUICK' if quick else ''}")

    from sweeper import synth
    from sweeper.backbone import create_backbone

    n_train, n_val = args.images, max(1, args.images // 2)
    log(f"synthetic set: {n_train} train + {n_val} val at 960x540")
    root = synth.generate(work / "set", train=n_train, val=n_val, test=0, size=(960, 540))
    backbone = create_backbone(BACKBONE)

    log("per-image costs")
    costs = per_image_costs(backbone, next((root / "train" / "Color_Images").glob("*.png")), repeats=3 if quick else 5)
    log("  " + ", ".join(f"{k} {costs[k] * 1e3:.0f} ms" for k in
                         ("backbone_forward_s", "head_train_step_s", "head_forward_s", "image_load_s", "checkpoint_s")))

    log("epochs: naive vs cached")
    bench = EpochBench(root, backbone, work / "cache")
    bench.measure(repeats, "before")

    log(f"sweep: {sweep_trials} trials of phase2.yaml, cache included")
    load_before = os.getloadavg()
    sweep = timed_sweep(root, work, sweep_trials, env)
    sweep["load_avg_before_after"] = [load_before, os.getloadavg()]
    bench.measure(repeats, "after")
    epochs = bench.summary()
    log(f"  epoch ratio {epochs['ratio_vs_search']:.1f}x (search trial), "
        f"{epochs['ratio_vs_cached_baseline']:.1f}x (cached baseline)")
    naive_run = NAIVE_EPOCHS * epochs["median_s"]["naive"]
    sweep["naive_10_epochs_s"] = naive_run
    sweep["naive_10_epochs_is"] = "extrapolated: 10 x the measured median naive epoch (deterministic work)"
    sweep["ratio"] = sweep["wall_s"] / naive_run
    sweep["naive_10_epochs_cpu_s"] = NAIVE_EPOCHS * epochs["median_cpu_s"]["naive"]
    sweep["cpu_ratio"] = sweep["cpu_s"] / sweep["naive_10_epochs_cpu_s"]  # the same comparison in CPU seconds
    log(f"  sweep {sweep['wall_s']:.0f} s vs naive 10 epochs {naive_run:.0f} s: ratio {sweep['ratio']:.2f}")

    import ray
    try:
        log("overhead: near-empty trials")
        ovh = overhead(work, overhead_trials)
        log(f"  ray.init {ovh['ray_init_s']:.1f} s, first trial start {ovh['first_trial_start_s']:.1f} s, "
            f"per trial {ovh['per_trial_s_serial']:.2f} s (one at a time), {ovh['per_trial_s_two_at_once']:.2f} s "
            f"(two at a time)")
        log("memory: one and two trials at once, two cache sizes")
        mem = memory_probe(work, *probe)
    finally:
        ray.shutdown()

    grid_bytes = (HEIGHT // 14) * (WIDTH // 14) * backbone.embed_dim * 4
    sc = scale(costs, epochs, sweep, ovh, grid_bytes)
    cache_mb = mem["two_trial_cache_mb"]
    sweep_cache_mb = epochs["cache_bytes"] / 2**20  # the sweep built the same cache as the epoch bench
    headline = {
        "epoch_ratio": {"value": epochs["ratio_vs_search"], "target": TARGETS["epoch_ratio"],
                        "met": epochs["ratio_vs_search"] >= 10,
                        "also_vs_cached_baseline": epochs["ratio_vs_cached_baseline"]},
        "sweep_ratio": {"value": sweep["ratio"], "target": TARGETS["sweep_ratio"], "met": sweep["ratio"] <= 1.0,
                        "cpu_seconds_ratio": sweep["cpu_ratio"]},
        "overhead_s_per_trial": {"value": ovh["per_trial_s_serial"], "target": TARGETS["overhead_s_per_trial"],
                                 "met": ovh["per_trial_s_serial"] < 1.0,
                                 "two_at_once": ovh["per_trial_s_two_at_once"],
                                 "sweep_startup_s": ovh["sweep_startup_s"]},
        # the timed sweep (its mix of batch sizes and optimisers, actors reused) and the probe's
        # bigger cache (identical phase-1 trials); the target must hold for both
        "two_trial_memory_mb": {"value": sweep["two_trial_memory_mb"], "cache_mb": sweep_cache_mb,
                                "target": TARGETS["two_trial_memory_mb"],
                                "met": (sweep["two_trial_memory_mb"] < sweep_cache_mb + 2048
                                        and mem["two_trial_memory_mb"] < cache_mb + 2048),
                                "probe_value": mem["two_trial_memory_mb"], "probe_cache_mb": cache_mb},
    }
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "quick": quick,
        "images": {"train": n_train, "val": n_val, "size": "960x540 synthetic, trained at 266x476"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
        "headline": headline, "per_image": costs, "epoch": epochs, "sweep": sweep, "overhead": ovh,
        "memory": mem, "scale": sc, "bench_wall_s": time.perf_counter() - started, "out": str(args.out),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print_summary(report)
    return 0


def print_summary(r: dict[str, Any]) -> None:
    h, e, s, o, m, sc = (r[k] for k in ("headline", "epoch", "sweep", "overhead", "memory", "scale"))
    c = r["per_image"]
    n = f"{r['images']['train']} train + {r['images']['val']} val"
    print(f"\nper image at 266x476, {c['threads']} threads: backbone {c['backbone_forward_s'] * 1e3:.0f} ms, "
          f"head step {c['head_train_step_s'] * 1e3:.0f} ms, head forward {c['head_forward_s'] * 1e3:.0f} ms, "
          f"image load {c['image_load_s'] * 1e3:.0f} ms; upsample+CE in the step "
          f"{c['upsample_ce_fwd_bwd_s'] * 1e3:.0f} ms; checkpoint {c['checkpoint_mb']:.0f} MB in "
          f"{c['checkpoint_s'] * 1e3:.0f} ms")
    print(f"epoch ({n}, medians of {e['repeats']}): naive {e['median_s']['naive']:.1f} s, cached search "
          f"{e['median_s']['cached_search']:.2f} s, cached baseline {e['median_s']['cached_baseline']:.2f} s")
    print(f"sweep ({s['trials']} trials, {s['epochs_run']} epochs run of {s['epochs_if_no_asha']} planned): "
          f"{s['wall_s']:.0f} s = " + " + ".join(f"{k} {v:.0f}" for k, v in s["timeline_s"].items()))
    print("  of which " + ", ".join(f"{k} {v:.0f} s" for k, v in s["parts_s"].items())
          + f"; head training {s['trial_training_s_total']:.0f} s in all = "
          f"{s['trial_training_over_concurrency_s']:.0f} s over {s['max_concurrent']} slots; "
          f"median epoch {s['epoch_s_median']:.2f} s; epochs per trial {s['epochs_run_per_trial']} "
          f"(baseline trial {s['baseline_trial_epochs']})")
    print(f"naive 10 epochs: {s['naive_10_epochs_s']:.0f} s ({s['naive_10_epochs_is']}); CPU seconds: sweep "
          f"{s['cpu_s']:.0f}, naive 10 epochs {s['naive_10_epochs_cpu_s']:.0f}")
    print(f"overhead: ray.init {o['ray_init_s']:.1f} s, first trial starts {o['first_trial_start_s']:.1f} s later; "
          f"a near-empty trial every {o['per_trial_s_serial']:.2f} s one at a time ({o['in_trial_s_median']:.2f} s "
          f"of it inside the trial), every {o['per_trial_s_two_at_once']:.2f} s two at a time")
    print("memory: sweep trial actors' private peaks " + ", ".join(f"{v:.0f}" for v in s["actor_peak_private_mb"].values())
          + f" MB; probe trials (phase-1 config) private {m['big']['x2']['private_mb'][0]:.0f} MB, shared "
          f"{m['big']['x2']['shared_mb'][0]:.0f} MB with a {m['big']['cache_mb']:.0f} MB cache")
    print(f"  private/shared MB per trial grows {m['private_growth_per_cache_mb']:.2f} / "
          f"{m['shared_growth_per_cache_mb']:.2f} per MB of cache; driver peak RSS {s['driver_peak_rss_mb']:.0f} MB "
          f"(sweep cache {r['epoch']['cache_bytes'] / 2**20:.0f} MB); counting class pixels peaks at "
          f"{e['pixel_count_peak_per_label_byte']:.1f} bytes per label byte "
          f"({sc['pixel_count_transient_gb_per_trial']:.1f} GB per trial on the full train set)")
    print(f"full set ({sc['images']} images): cache {sc['cache_gb_float32']:.2f} GB float32 / "
          f"{sc['cache_gb_float16']:.2f} GB float16; epoch naive {sc['epoch_s']['naive'] / 60:.0f} min, cached "
          f"search {sc['epoch_s']['cached_search'] / 60:.1f} min, cached baseline "
          f"{sc['epoch_s']['cached_baseline'] / 60:.1f} min ({sc['threads']} threads); sweep "
          f"{sc['sweep_s'] / 3600:.1f} h vs naive 10 epochs {10 * sc['epoch_s']['naive'] / 3600:.1f} h: ratio "
          f"{sc['sweep_ratio']:.2f}")
    rows = [
        ("epoch ratio (naive / cached search epoch)", f"{h['epoch_ratio']['value']:.1f}x "
         f"(vs cached baseline {h['epoch_ratio']['also_vs_cached_baseline']:.1f}x)", h["epoch_ratio"]),
        ("sweep ratio (32-trial sweep / naive 10 ep.)", f"{h['sweep_ratio']['value']:.2f} "
         f"(in CPU seconds {h['sweep_ratio']['cpu_seconds_ratio']:.2f})", h["sweep_ratio"]),
        ("overhead per trial (near-empty, start to start)", f"{h['overhead_s_per_trial']['value']:.2f} s "
         f"(start-up {h['overhead_s_per_trial']['sweep_startup_s']:.1f} s)", h["overhead_s_per_trial"]),
        ("two-trial memory (sweep; probe)", f"{h['two_trial_memory_mb']['value']:.0f} MB (cache "
         f"{h['two_trial_memory_mb']['cache_mb']:.0f}); {h['two_trial_memory_mb']['probe_value']:.0f} MB (cache "
         f"{h['two_trial_memory_mb']['probe_cache_mb']:.0f})", h["two_trial_memory_mb"]),
    ]
    print(f"\n{'figure':<48} {'measured':<42} {'target':<16} met")
    for name, value, d in rows:
        print(f"{name:<48} {value:<42} {d['target']:<16} {'yes' if d['met'] else 'NO'}")
    print(f"\n{r['command']}{' (QUICK: not for comparison)' if r['quick'] else ''}; {n}; "
          f"{r['bench_wall_s'] / 60:.1f} min; wrote {r['out']}")


if __name__ == "__main__":
    raise SystemExit(main())
