"""`sweeper plan`: what a sweep will cost on this machine, before anything expensive runs.

The model, and what each projection rests on:

- **Trial-epochs** (`trial_epoch_range`): the baseline trial always runs its epochs (ASHA never stops it).
  Each other trial plans the space's expected epochs (the mean of `epochs` over its distribution, capped
  at `asha.max_epochs`). ASHA's rungs are Ray's: grace x factor^k below max epochs.
  *Lower bound*: synchronous survival, a 1/factor share of trials passing each rung.
  *Expected*: Ray's asynchronous rule simulated (`simulate_asha`): trials reach each rung in the order they
  started, each is stopped when its score is below the (1 - 1/factor) quantile of the scores recorded at that
  rung so far (the first always passes, so small sweeps stop fewer than the synchronous share), scores drawn
  at random and kept across rungs (a trial good at one rung is good at the next).
  *Upper bound*: no stopping, every trial at the most epochs the space allows.
- **Time**: cache = images without an entry x the backbone's forward per image (measured here, on the
  device that builds it). A trial-epoch = train images x the head's training step per image at the
  space's mean batch size + val images x the eval step per image (both measured here with `train`, the
  product's own loop, on random tokens of the real shape, with the trial's thread count); trials at once
  share the cores: a trial-epoch is slower by (trials x threads) / cores when that exceeds 1. The sweep =
  expected trial-epochs x trial-epoch / trials at once, plus Ray's start-up and each trial's set-up
  (`RAY_START_S`, `TRIAL_SETUP_S`, measured by scripts/bench.py on the 2-core CPU). The naive phase-1 run
  = 10 epochs of 4 backbone passes per image plus the head's steps.
- **Memory**: the cache's bytes are exact (the arrays' shapes). A trial's host memory = a trial process's
  own imports (measured in a fresh process) + the training working set (this process's peak resident
  memory during the largest benchmark, less what it held before). On a GPU, a trial needs its working set
  (the allocator's peak reserved bytes in the benchmark) plus the cached tokens where its share stages
  them (`sweeper.device.tokens_fit`), within `sweeper.device.memory_budget` of its share.

Pure functions (the model) are apart from the measuring ones, so the model is tested on crafted numbers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sweeper.errors import SweeperError

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"  # written by `sweeper plan` into --out; `search` reuses a recent one
PLAN_MAX_AGE_S = 7 * 24 * 3600  # a plan older than this is not reused (the machine may have changed)
RAY_START_S = 12.4  # a local Ray's start-up with the sweep's set-up, measured by scripts/bench.py (2-core CPU)
TRIAL_SETUP_S = 0.6  # one trial's set-up in a reused worker, measured by scripts/bench.py
GPU_SHARES = (1 / 8, 1 / 6, 1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0)  # shares the recommendation chooses among
MARGIN = 1.2  # a peak must fit this many times over to be recommended
NAIVE_EPOCHS = 10  # phase 1's run


# --------------------------------------------------------------------------- the model (pure)


def asha_milestones(asha) -> list[int]:
    """Ray's rungs for (grace, factor, max epochs), ascending: grace x factor^k up to max epochs' log."""
    rungs = int(math.log(asha.max_epochs / asha.grace_period) / math.log(asha.reduction_factor) + 1)
    return sorted(int(asha.grace_period * asha.reduction_factor ** k) for k in range(rungs))


def epochs_distribution(space) -> np.ndarray:
    """Every value a trial's `epochs` can take with its probability mass, as an (n, 2) array, capped at
    ASHA's max epochs; the fixed or default value when the space does not search it."""
    spec = next((p for p in space.params if p.name == "epochs"), None)
    if spec is None:
        values = [space.to_config({}).epochs]
    elif spec.type.value == "categorical":
        values = [int(v) for v in spec.choices]
    else:
        values = list(range(int(spec.low), int(spec.high) + 1))
    values = [min(v, space.asha.max_epochs) for v in values]
    return np.array([[v, 1 / len(values)] for v in values])


def synchronous_epochs(epochs: float, milestones: Sequence[int], factor: int) -> float:
    """Expected epochs of one trial planning `epochs` when a 1/factor share passes each rung."""
    total, survive, start = 0.0, 1.0, 0
    for m in [*milestones, math.inf]:
        total += survive * max(0.0, min(epochs, m) - start)
        if epochs <= m:
            break
        start, survive = m, survive / factor
    return total


def simulate_asha(n_trials: int, trial_epochs: np.ndarray, baseline_epochs: int, milestones: Sequence[int],
                  factor: int, *, runs: int = 2000, seed: int = 0) -> np.ndarray:
    """Trial-epochs of `runs` simulated sweeps under Ray's asynchronous ASHA rule (see the module docstring).
    `trial_epochs`: an (n, 2) array of planned epochs and their probabilities for the non-baseline trials."""
    rng = np.random.default_rng(seed)
    values, probs = trial_epochs[:, 0].astype(int), trial_epochs[:, 1]
    out = np.empty(runs)
    q = 1 - 1 / factor
    for r in range(runs):
        recorded: dict[int, list[float]] = {m: [] for m in milestones}
        total = 0
        for t in range(n_trials):
            score = rng.random()
            planned = baseline_epochs if t == 0 else int(rng.choice(values, p=probs))
            ran = planned
            for m in milestones:
                if m > planned:
                    break
                seen = recorded[m]
                stopped = t != 0 and seen and score < np.quantile(seen, q)
                seen.append(score)
                if stopped:
                    ran = m
                    break
            total += ran
        out[r] = total
    return out


def trial_epoch_range(space, trials: int) -> dict[str, float]:
    """Lower, expected and upper trial-epochs of a sweep of `trials` over `space` (module docstring)."""
    dist = epochs_distribution(space)
    baseline = min(space.to_config(space.baseline_point()).epochs, space.asha.max_epochs)
    milestones = asha_milestones(space.asha)
    factor = space.asha.reduction_factor
    others = trials - 1
    lower = baseline + others * float(sum(p * synchronous_epochs(v, milestones, factor) for v, p in dist))
    upper = baseline + others * float(dist[:, 0].max())
    sims = simulate_asha(trials, dist, baseline, milestones, factor)
    return {"lower": round(lower, 1), "expected": round(float(sims.mean()), 1), "upper": float(upper),
            "simulated_p10": float(np.percentile(sims, 10)), "simulated_p90": float(np.percentile(sims, 90))}


def mean_choice(space, name: str) -> float:
    """The mean of a searched numeric field over its distribution, or its fixed/default value."""
    spec = next((p for p in space.params if p.name == name), None)
    if spec is None:
        return float(getattr(space.to_config({}), name))
    if spec.type.value == "categorical":
        return float(np.mean([float(c) for c in spec.choices]))
    return (float(spec.low) + float(spec.high)) / 2


def choices(space, name: str) -> list[Any]:
    """Every value a field can take in this space (the baseline's included)."""
    spec = next((p for p in space.params if p.name == name), None)
    base = getattr(space.to_config(space.baseline_point()), name)
    values = list(spec.choices) if spec is not None and spec.type.value == "categorical" else [base]
    return list(dict.fromkeys([base, *values]))


@dataclass(frozen=True)
class Bench:
    """What the micro-benchmarks measured on this machine and device (seconds per image, MB)."""

    device: str
    threads: int
    backbone_s_per_image: float
    train_s_per_image: dict[str, float]  # "head/batch" -> one training step's seconds per image
    eval_s_per_image: dict[str, float]  # head -> the eval pass's seconds per image
    working_set_mb: dict[str, float]  # "head/batch" -> host memory the run added at its peak
    gpu_reserved_mb: dict[str, float] = field(default_factory=dict)  # "head/batch" -> allocator peak
    trial_import_mb: float = 0.0  # a fresh trial process's resident memory before training
    seconds: float = 0.0  # what the benchmarks took


def trial_epoch_seconds(bench: Bench, heads: Sequence[str], batches: Sequence[int], n_train: int,
                        n_val: int, slowdown: float) -> float:
    """A trial-epoch's seconds, averaged over the heads and batch sizes the space can choose."""
    per = [n_train * bench.train_s_per_image[f"{h}/{b}"] + n_val * bench.eval_s_per_image[h]
           for h in heads for b in batches]
    return slowdown * float(np.mean(per))


def contention(concurrent: int, threads: int, cores: int, device: str) -> float:
    """How much slower a trial-epoch runs when `concurrent` trials share this machine's cores (CPU only)."""
    return 1.0 if device != "cpu" else max(1.0, concurrent * threads / max(1, cores))


def naive_epoch_seconds(bench: Bench, n_train: int, n_val: int) -> float:
    """Phase 1's epoch: the backbone on every image 4 times (train, train metrics, val loss, val metrics)
    beside the head's steps at batch 2 and its two eval passes."""
    head = "convnext_phase1"
    train = bench.train_s_per_image.get(f"{head}/2", next(iter(bench.train_s_per_image.values())))
    ev = bench.eval_s_per_image.get(head, next(iter(bench.eval_s_per_image.values())))
    return (n_train * (2 * bench.backbone_s_per_image + train + ev)
            + n_val * 2 * (bench.backbone_s_per_image + ev))


def recommend_gpu(need_mb: dict[float, float], card_bytes: int, limit_bytes: int | None) -> dict[str, Any] | None:
    """The smallest share (most trials at once) whose cap holds its measured need `MARGIN` times over.
    `need_mb`: share -> MB a trial needs at that share (its working set plus any tokens the share stages)."""
    from sweeper.device import memory_budget

    for share in GPU_SHARES:
        cap = memory_budget(share, card_bytes, limit_bytes=limit_bytes)
        cap_mb = (cap if cap is not None else min(card_bytes, limit_bytes or card_bytes)) / 2**20
        if need_mb[share] * MARGIN <= cap_mb:
            return {"gpus_per_trial": round(share, 4), "max_concurrent": int(round(1 / share)),
                    "cap_mb": round(cap_mb), "need_mb": round(need_mb[share]),
                    "margin": round(cap_mb / need_mb[share], 2)}
    return None


def recommend_cpu(trial_mb: float, available_mb: float, cores: int, threads: int) -> dict[str, Any]:
    """Trials at once on the CPU: one per `threads` cores, as many as the free memory holds `MARGIN` times."""
    by_cores = max(1, cores // max(1, threads))
    by_memory = max(1, int(available_mb / (trial_mb * MARGIN)))
    n = min(by_cores, by_memory)
    return {"gpus_per_trial": 0, "max_concurrent": n, "limited_by": "cores" if by_cores <= by_memory else "memory",
            "margin": round(available_mb / (n * trial_mb), 2)}


# --------------------------------------------------------------------------- the machine


def available_memory_mb() -> float:
    """Memory the system can give without swapping (MemAvailable), in MB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**20


def resident_mb() -> tuple[float, float]:
    """This process's (resident, peak resident) memory in MB from /proc (peak since the last reset)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = float(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def reset_peak_resident() -> bool:
    """Reset this process's peak resident memory (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def trial_import_mb() -> float:
    """Resident MB of a fresh process that imported what a trial imports (Ray, torch, sweeper's trial)."""
    code = ("import ray, torch, sweeper.trial, sweeper.plan as p; print(p.resident_mb()[0])")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return 0.0


def plan_summary(plan: dict[str, Any]) -> str:
    """The one line `search` prints at start."""
    t, e, r = plan.get("time", {}), plan.get("trial_epochs", {}), plan.get("resources", {})
    parts = []
    if e:
        parts.append(f"{e['expected']:.0f} trial-epochs expected ({e['lower']:.0f}-{e['upper']:.0f})")
    if t.get("sweep_seconds"):
        parts.append(f"about {t['sweep_seconds'] / 60:.0f} min at {plan['options']['max_concurrent']} at once")
    if r.get("cache_missing_bytes") is not None:
        parts.append(f"cache to build {r['cache_missing_bytes'] / 1e9:.2f} GB "
                     f"({r['cache_free_bytes'] / 1e9:.1f} GB free)")
    if r.get("trial_host_mb"):
        parts.append(f"trial peak ~{r['trial_host_mb']:.0f} MB")
    return "plan: " + ("; ".join(parts) if parts else "nothing to project")


def asdict_bench(bench: Bench) -> dict[str, Any]:
    return asdict(bench)


def bench_from_dict(d: dict[str, Any]) -> Bench:
    return Bench(**d)


def load_recent_plan(path: Path, *, key: dict[str, Any]) -> dict[str, Any] | None:
    """A plan.json written for the same data, device and space (`key`) in the last `PLAN_MAX_AGE_S`."""
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if plan.get("key") != key or time.time() - float(plan.get("written_at", 0)) > PLAN_MAX_AGE_S:
        return None
    return plan


# --------------------------------------------------------------------------- the micro-benchmarks


def _random_data(n_train: int, n_val: int, *, grid: tuple[int, int], embed_dim: int, height: int, width: int):
    """Train data of random tokens and labels of the real shapes: what a trial's steps cost, not its scores."""
    from sweeper.data import CLASS_NAMES, NUM_CLASSES
    from sweeper.tokens import ArrayTokens, SplitData, TrainData

    rng = np.random.default_rng(0)

    def split(name: str, n: int) -> SplitData:
        tokens = rng.standard_normal((n, *grid, embed_dim), dtype=np.float32)
        labels = rng.integers(0, NUM_CLASSES, (n, height, width), dtype=np.uint8)
        return SplitData(name, labels, ArrayTokens(tokens))

    return TrainData(train=split("train", n_train), val=split("val", n_val), embed_dim=embed_dim,
                     class_names=CLASS_NAMES[:NUM_CLASSES])


def _epoch_seconds(cfg, data) -> tuple[float, float, float]:
    """The second (warm) epoch's seconds of `train` on `data`; the host MB it added at its peak; the GPU
    allocator's peak reserved MB (0 on the CPU)."""
    import torch

    from sweeper.train import train

    cuda = cfg.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before, _ = resident_mb()
    reset_peak_resident()
    history = train(cfg.replace(epochs=2), data).history
    _, peak = resident_mb()
    reserved = torch.cuda.max_memory_reserved() / 2**20 if cuda else 0.0
    return float(history[-1]["epoch_seconds"]), max(0.0, peak - before), reserved


def measure(backbone, split, *, device: str, threads: int, heads: Sequence[str], batches: Sequence[int],
            height: int, width: int) -> Bench:
    """Time the backbone's forward (the cache build's path: decoding workers, then the backbone) and, per head
    and batch size, `train`'s training step and eval pass on random tokens of the real shape."""
    import torch

    from sweeper.config import TrainConfig
    from sweeper.features import image_batches
    from sweeper.parallel import default_workers

    started = time.perf_counter()
    cuda = device.startswith("cuda")
    old_threads = torch.get_num_threads()
    try:
        batch = 32 if cuda else 4  # the cache build's batch, in the driver with all of its threads
        n = min(len(split), 2 * batch)
        sub = type(split)(split.name, split.root, split.image_paths[:n], split.mask_paths[:n])
        backbone = backbone.to(device)
        seconds, images = [], []
        for x in image_batches(sub, batch_size=batch, height=height, width=width, workers=default_workers(),
                               pin=cuda):
            t = time.perf_counter()
            backbone(x.to(device, non_blocking=True)).float().cpu()
            seconds.append(time.perf_counter() - t)
            images.append(len(x))
        backbone.to("cpu")
        # the first batch pays for lazy set-up: the rest when there is a rest
        backbone_s = (sum(seconds[1:]) / sum(images[1:])) if len(seconds) > 1 else seconds[0] / images[0]
        grid = (height // backbone.patch_size, width // backbone.patch_size)
        torch.set_num_threads(max(1, threads))  # a trial's steps run on its own threads (--cpus-per-trial)
        steps = 8 if cuda else 3
        val_small, val_large = (8, 40) if cuda else (4, 16)
        train_s, eval_s, working, reserved = {}, {}, {}, {}
        for head in heads:
            base = TrainConfig(head=head, train_metrics=False, device=device, image_height=height,
                               image_width=width)
            for b in batches:
                data = _random_data(b * steps, val_small, grid=grid, embed_dim=backbone.embed_dim, height=height,
                                    width=width)
                t, w, r = _epoch_seconds(base.replace(batch_size=int(b)), data)
                key = f"{head}/{b}"
                train_s[key], working[key], reserved[key] = t, w, r
            b0 = int(batches[0])
            more = _random_data(b0 * steps, val_large, grid=grid, embed_dim=backbone.embed_dim, height=height,
                                width=width)
            t_more, _, _ = _epoch_seconds(base.replace(batch_size=b0), more)
            eval_s[head] = max(0.0, (t_more - train_s[f"{head}/{b0}"]) / (val_large - val_small))
            for b in batches:
                key = f"{head}/{b}"
                train_s[key] = max(1e-6, (train_s[key] - val_small * eval_s[head]) / (int(b) * steps))
    finally:
        torch.set_num_threads(old_threads)
    return Bench(device=device, threads=threads, backbone_s_per_image=backbone_s, train_s_per_image=train_s,
                 eval_s_per_image=eval_s, working_set_mb=working, gpu_reserved_mb=reserved,
                 trial_import_mb=trial_import_mb(), seconds=round(time.perf_counter() - started, 1))


# --------------------------------------------------------------------------- the plan


def make_plan(args, space, *, bench: Bench | None = None) -> dict[str, Any]:
    """Everything `sweeper plan` prints and writes, for the options in `args` (the search's own options)."""
    from sweeper.cluster import local_nodes, trial_resources
    from sweeper.data import find_split, image_size
    from sweeper.device import CUDA_CONTEXT_BYTES, memory_budget, resolve_device, tokens_fit
    from sweeper.features import cache_entries, default_cache_root, free_bytes
    from sweeper.inputs import resolve_backbone, resolve_data
    from sweeper.parallel import available_cores

    source = resolve_data(args)
    device = resolve_device(args.device)
    backbone = resolve_backbone(args, source)
    base = space.to_config(space.baseline_point())
    height, width = base.image_height, base.image_width
    splits = {name: find_split(source.root, name) for name in ("train", "val")}
    n_train, n_val = len(splits["train"]), len(splits["val"])
    cache_root = Path(args.cache_dir or default_cache_root())
    entries = cache_entries(splits, backbone, cache_root=cache_root, height=height, width=width,
                            label_mode=base.label_mode, dtype=str(args.cache_dtype),
                            allow_unknown=bool(args.allow_unknown_ids),
                            train_variants=space.train_variants(base.label_mode.value))
    trials = args.trials or space.trials
    gpus, concurrent = trial_resources(local_nodes(), device="cpu" if device.type == "cpu" else args.device,
                                       gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
                                       default_concurrent=space.max_concurrent)
    threads = max(1, int(args.cpus_per_trial))
    heads = [str(h) for h in choices(space, "head")]
    batches = sorted(int(b) for b in choices(space, "batch_size"))
    if bench is None:
        bench = measure(backbone, splits["val"], device=str(device), threads=threads, heads=heads,
                        batches=batches, height=height, width=width)
    cores = available_cores()
    slowdown = contention(concurrent, threads, cores, bench.device)
    epoch_s = trial_epoch_seconds(bench, heads, batches, n_train, n_val, slowdown)
    e = trial_epoch_range(space, trials)
    missing = [x for x in entries if not x.exists]
    missing_images = sum(n_train if x.path.parent.name == "tokens" and x.path.name.startswith("train") else
                         n_val if x.path.parent.name == "tokens" else 0 for x in missing)
    cache_s = missing_images * bench.backbone_s_per_image
    fixed_s = RAY_START_S + trials * TRIAL_SETUP_S

    def sweep_s(trial_epochs: float) -> float:
        return fixed_s + trial_epochs * epoch_s / concurrent

    store = sum(x.nbytes for x in entries)
    host_mb = bench.trial_import_mb + max(bench.working_set_mb.values())
    resources: dict[str, Any] = {
        "cache_bytes": store, "cache_missing_bytes": sum(x.nbytes for x in missing),
        "cache_free_bytes": free_bytes(cache_root), "out_free_bytes": free_bytes(Path(args.out)),
        "object_store_bytes": store, "trial_host_mb": round(host_mb), "available_memory_mb": round(available_memory_mb()),
        "cache_entries": [{"path": str(x.path), "bytes": x.nbytes, "exists": x.exists} for x in entries]}
    out: dict[str, Any] = {
        "key": plan_key(args, space),
        "written_at": time.time(), "space": str(space.source),
        "data": {"root": str(source.root), "synthetic": source.synthetic, "train_images": n_train,
                 "val_images": n_val, "image_size": list(image_size(splits["train"].image_paths[0])),
                 "training_size": [height, width]},
        "options": {"device": str(device), "gpus_per_trial": gpus, "max_concurrent": concurrent,
                    "cpus_per_trial": threads, "cache_dtype": str(args.cache_dtype), "trials": trials,
                    "gpu_memory_gib": args.gpu_memory},
        "bench": asdict_bench(bench), "trial_epochs": e, "resources": resources,
        "time": {"trial_epoch_seconds": round(epoch_s, 2), "contention": round(slowdown, 2),
                 "cache_seconds": round(cache_s, 1), "sweep_seconds": round(sweep_s(e["expected"]) + cache_s, 1),
                 "sweep_seconds_range": [round(sweep_s(e["lower"]) + cache_s, 1), round(sweep_s(e["upper"]) + cache_s, 1)],
                 "naive_phase1_seconds": round(NAIVE_EPOCHS * naive_epoch_seconds(bench, n_train, n_val), 1)},
    }
    if device.type == "cuda":
        import torch

        card = torch.cuda.get_device_properties(device.index or 0).total_memory
        limit = int(args.gpu_memory * 2**30) if args.gpu_memory else None
        tokens_bytes = sum(x.nbytes for x in entries if x.path.parent.name == "tokens")
        work_mb = max(bench.gpu_reserved_mb.values())
        need = {}
        for share in GPU_SHARES:
            cap = memory_budget(share, card, limit_bytes=limit) or card
            need[share] = work_mb + (tokens_bytes / 2**20 if tokens_fit(tokens_bytes, cap) else 0.0)
        chosen_cap = memory_budget(gpus, card, limit_bytes=limit) if gpus else None
        resources.update({"gpu_card_bytes": card, "gpu_working_set_mb": round(work_mb),
                          "gpu_cap_mb": None if chosen_cap is None else round(chosen_cap / 2**20),
                          "cuda_context_mb": CUDA_CONTEXT_BYTES / 2**20})
        out["recommendation"] = recommend_gpu(need, card, limit)
    else:
        out["recommendation"] = recommend_cpu(host_mb, available_memory_mb(), cores, threads)
    out["refusals"] = refusals(out)
    return out


def plan_key(args, space) -> dict[str, Any]:
    """What a plan's micro-benchmarks and projections are valid for: the same --data, --device, --backbone,
    --cache-dtype and space file (as given on the command line: `search` checks it before loading anything)."""
    from sweeper.files import file_sha256

    return {"data": str(Path(args.data).resolve()) if args.data else "embedded synthetic set",
            "device": str(args.device), "backbone": str(args.backbone), "cache_dtype": str(args.cache_dtype),
            "space_sha256": file_sha256(Path(space.source))}


def refusals(plan: dict[str, Any]) -> list[str]:
    """What `search` would refuse with these options, each as its one-line reason."""
    r, o = plan["resources"], plan["options"]
    out = []
    if r["cache_missing_bytes"] > r["cache_free_bytes"]:
        out.append(f"the cache needs {r['cache_missing_bytes'] / 1e9:.2f} GB more and its disk has "
                   f"{r['cache_free_bytes'] / 1e9:.2f} GB free")
    cap = r.get("gpu_cap_mb")
    if cap is not None and r.get("gpu_working_set_mb", 0) > cap:
        out.append(f"--gpus-per-trial {o['gpus_per_trial']:g}: a trial needs ~{r['gpu_working_set_mb']} MB of GPU "
                   f"memory and its share's cap is {cap} MB")
    return out


def check_share_fits(plan: dict[str, Any] | None, gpus_per_trial: float, card_bytes: int,
                     limit_bytes: int | None, plan_path: Path) -> None:
    """Refuse, in one line before any work, a GPU share whose cap cannot hold the trial's measured need."""
    from sweeper.device import memory_budget

    if plan is None or not gpus_per_trial or "gpu_working_set_mb" not in plan.get("resources", {}):
        return
    cap = memory_budget(gpus_per_trial, card_bytes, limit_bytes=limit_bytes)
    need = float(plan["resources"]["gpu_working_set_mb"])
    if cap is not None and need * 2**20 > cap:
        rec = plan.get("recommendation") or {}
        hint = (f"use --gpus-per-trial {rec['gpus_per_trial']:g} (the plan's recommendation)" if rec
                else "no share of this card fits it")
        raise SweeperError(f"--gpus-per-trial {gpus_per_trial:g}: a trial needs ~{need:.0f} MB of GPU memory "
                           f"(measured by sweeper plan, {plan_path}) and its share's cap is {cap / 2**20:.0f} MB "
                           f"on this card: {hint}")


def format_plan(plan: dict[str, Any]) -> str:
    """The table `sweeper plan` prints: one line per question, readable at a glance."""
    d, o, b, e, t, r = (plan[k] for k in ("data", "options", "bench", "trial_epochs", "time", "resources"))
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    mins = lambda s: f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"  # noqa: E731
    train_ms = ", ".join(f"{k} {1000 * v:.0f}" for k, v in b["train_s_per_image"].items())
    rows = [
        ("data", f"{d['train_images']} train + {d['val_images']} val images {d['image_size'][0]}x{d['image_size'][1]}"
                 f"{' (SYNTHETIC)' if d['synthetic'] else ''}, trained at {d['training_size'][1]}x{d['training_size'][0]}"),
        ("measured here", f"{b['device']}, {b['threads']} thread(s): backbone {1000 * b['backbone_s_per_image']:.0f} ms/image; "
                          f"train step ms/image {train_ms}; eval "
                          + ", ".join(f"{k} {1000 * v:.0f}" for k, v in b["eval_s_per_image"].items()) + " ms/image"),
        ("cache", f"{gb(r['cache_bytes'])} in all, {gb(r['cache_missing_bytes'])} to build (~{mins(t['cache_seconds'])}); "
                  f"{gb(r['cache_free_bytes'])} free there"),
        ("trial-epochs", f"{e['expected']:.0f} expected (lower {e['lower']:.0f}, upper {e['upper']:.0f}) for "
                         f"{o['trials']} trials"),
        ("time", f"trial-epoch {t['trial_epoch_seconds']:.1f} s x{t['contention']:g} contention; sweep ~"
                 f"{mins(t['sweep_seconds'])} ({mins(t['sweep_seconds_range'][0])}-{mins(t['sweep_seconds_range'][1])}) "
                 f"at {o['max_concurrent']} at once; one naive phase-1 run ~{mins(t['naive_phase1_seconds'])}"),
        ("memory", f"trial ~{r['trial_host_mb']} MB host; object store {gb(r['object_store_bytes'])}; "
                   f"{r['available_memory_mb']} MB available"
                   + (f"; GPU working set {r['gpu_working_set_mb']} MB, cap {r['gpu_cap_mb']} MB at "
                      f"{o['gpus_per_trial']:g}" if "gpu_working_set_mb" in r else "")),
    ]
    rec = plan.get("recommendation")
    rows.append(("recommendation", "no share of this card holds a trial" if rec is None else
                 f"--max-concurrent {rec['max_concurrent']} --gpus-per-trial {rec['gpus_per_trial']:g} "
                 f"(margin {rec['margin']}x" + (f", limited by {rec['limited_by']})" if "limited_by" in rec else ")")))
    rows.append(("search would refuse", "; ".join(plan["refusals"]) or "nothing"))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {v}" for a, v in rows)
