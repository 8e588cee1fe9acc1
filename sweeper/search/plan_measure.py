"""`sweeper plan` on this machine: micro-benchmarks through the product's own code paths (`train` on random
tokens of the real shape, the cache build's decoding and backbone), the memory the system and a trial
process have (its probe trials on the sweep's own cached tokens where they exist: a trial on real tokens can
grow confident, random ones never do), and `make_plan`, which hands them to the model in `sweeper.search.plan`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sweeper.search.plan import (GPU_SHARES, NAIVE_EPOCHS, RAY_START_S, TRIAL_SETUP_S, Bench, choices,
                                 cold_epoch_seconds, contention, epoch_growth_warnings, memory_worst_point,
                                 naive_epoch_seconds, plan_key,
                                 probe_concurrency, probe_epochs, recommend_cpu, recommend_gpu, refusals,
                                 simulated_sweep_seconds, sweep_epoch_factor, sweep_seconds, trial_epoch_seconds,
                                 trial_memory_mb)
from sweeper.search.plan_epochs import asha_simulation, trial_epoch_range

log = logging.getLogger(__name__)


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


def trial_process(config: dict[str, Any], **shape: Any) -> dict[str, Any]:
    """`probe_trials(config, **shape)` in a child process (a local Ray of its own, shut down after), or {} when it
    could not run."""
    code = ("import json\nfrom sweeper.search.plan_measure import probe_trials\n"
            f"print(json.dumps(probe_trials({config!r}, **{shape!r})))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError) as e:
        log.warning("could not measure a trial process: %s", e)
        return {}


def probe_trials(config: dict[str, Any], *, n_train: int, n_val: int, grid: tuple[int, int], embed_dim: int,
                 height: int, width: int, dtype: str = "float16", threads: int = 1, repeats: int = 2,
                 epochs: int = 2, concurrent: int = 1, cached: dict[str, str] | None = None) -> dict[str, Any]:
    """In this process: a local Ray started as `search` starts it, random arrays of the real shape put into its
    object store by the sweep's own trainable (`sweeper.search.driver.make_trainable`: `trial_main` itself), and
    `concurrent` workers at once each running `repeats` trials of `config` one after the other (as the sweep
    reuses them), each epoch reported to Ray Tune's session with its checkpoint persisted. Each trial's peak
    private MB (the trial's own sampler) and epoch seconds. `cached`: the sweep's cache entries (`probe_data`)."""
    import tempfile

    import ray
    from ray import tune

    from sweeper.search.driver import make_trainable
    from sweeper.search.options import SearchOptions
    from sweeper.search.ray_local import start_ray
    from sweeper.search.trial import trial_bytes
    from sweeper.training.objective import Objective

    data, tokens = probe_data(cached, n_train, n_val, grid=tuple(grid), embed_dim=embed_dim, height=height,
                              width=width, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="sweeper-plan-") as d:
        trials_n = repeats * concurrent
        opts = SearchOptions(name="plan", out_root=Path(d), trials=trials_n, max_concurrent=concurrent,
                             gpus_per_trial=0.0, cpus_per_trial=threads, seed=0)
        t0 = time.perf_counter()
        start_ray(opts, data_bytes=trial_bytes(data))
        t1 = time.perf_counter()
        try:
            tuner = tune.Tuner(
                make_trainable(data, opts),
                param_space={**config, "epochs": epochs, "threads": threads, "device": "cpu",
                             **Objective().trial_keys()},
                run_config=tune.RunConfig(name="probe", storage_path=d, verbose=0,
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
                tune_config=tune.TuneConfig(num_samples=trials_n, reuse_actors=True, max_concurrent_trials=concurrent))
            trials = []
            for r in tuner.fit():
                if r.error is not None:
                    raise r.error
                df = r.metrics_dataframe
                trials.append({"peak_private_mb": float(df.peak_private_mb.max()),
                               "epoch_seconds": [float(x) for x in df.epoch_seconds]})
            t2 = time.perf_counter()
        finally:
            ray.shutdown()
    # a sweep's start: Ray's (start_ray), then Tune's and the first (fresh) workers', which is the fit's time
    # beyond a worker's share of the trials' epochs and each trial's set-up in a reused worker
    epochs_s = sum(sum(t["epoch_seconds"]) for t in trials) / concurrent
    return {"config": config, "tokens": tokens, "trials": trials, "token_bytes": int(data.train.tokens.array.nbytes
                                                                     + data.val.tokens.array.nbytes),
            "n_train": n_train, "n_val": n_val, "concurrent": concurrent, "ray_start_s": round(t1 - t0, 2),
            "fit_s": round(t2 - t1, 2), "start_s": round(t1 - t0 + max(0.0, t2 - t1 - epochs_s
                                                                       - repeats * TRIAL_SETUP_S), 2)}


def probe_data(cached: dict[str, str] | None, n_train: int, n_val: int, **shape: Any) -> tuple[Any, str]:
    """The probe's train data and where it came from: the first images of the sweep's cached tokens and labels
    (`cached`: paths of train_tokens, train_labels, val_tokens, val_labels) when the cache holds enough of them,
    else random tokens of the same shape."""
    from sweeper.data.classes import CLASS_NAMES, NUM_CLASSES
    from sweeper.data.tokens import ArrayTokens, SplitData, TrainData

    arrays = {k: np.load(v, mmap_mode="r") for k, v in (cached or {}).items()}
    if not arrays or len(arrays["train_tokens"]) < n_train or len(arrays["val_tokens"]) < n_val:
        return _random_data(n_train, n_val, **shape), "random"

    def split(name: str, n: int) -> SplitData:
        tokens = ArrayTokens(np.array(arrays[f"{name}_tokens"][:n]))
        return SplitData(name, np.array(arrays[f"{name}_labels"][:n]), tokens)

    return TrainData(train=split("train", n_train), val=split("val", n_val), embed_dim=shape["embed_dim"],
                     class_names=CLASS_NAMES[:NUM_CLASSES]), "cached"


def _random_data(n_train: int, n_val: int, *, grid: tuple[int, int], embed_dim: int, height: int, width: int,
                 dtype: str = "float32"):
    """Train data of random tokens and labels of the real shapes: what a trial's steps cost, not its scores."""
    from sweeper.data.classes import CLASS_NAMES, NUM_CLASSES
    from sweeper.data.tokens import ArrayTokens, SplitData, TrainData

    rng = np.random.default_rng(0)

    def split(name: str, n: int) -> SplitData:
        tokens = rng.standard_normal((n, *grid, embed_dim), dtype=np.float32).astype(dtype, copy=False)
        labels = rng.integers(0, NUM_CLASSES, (n, height, width), dtype=np.uint8)
        return SplitData(name, labels, ArrayTokens(tokens))

    return TrainData(train=split("train", n_train), val=split("val", n_val), embed_dim=embed_dim,
                     class_names=CLASS_NAMES[:NUM_CLASSES])


def warm_seconds_per_image(seconds: Sequence[float], images: Sequence[int]) -> float:
    """Seconds per image of the fastest batch after the first (which pays for lazy set-up; on a shared machine
    others' work only slows a batch down), or of the only one."""
    return min(s / n for s, n in zip(seconds[1:], images[1:])) if len(seconds) > 1 else seconds[0] / images[0]


def _epoch_seconds(cfg, data) -> tuple[float, float, float, float]:
    """A warm epoch's seconds of `train` on `data` (the faster of epochs 2 and 3: timings on a shared machine
    only err upwards); what the first (cold) epoch took beyond a warm one; the host MB the run added at its
    peak; the GPU allocator's peak reserved MB (0 on the CPU)."""
    import torch

    from sweeper.training.device import release_memory
    from sweeper.training.train import train

    cuda = cfg.device.startswith("cuda")
    release_memory()  # freed heap goes back to the system first: what the run adds then shows in its peak
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before, _ = resident_mb()
    reset_peak_resident()
    history = train(cfg.replace(epochs=3), data).history
    _, peak = resident_mb()
    reserved = torch.cuda.max_memory_reserved() / 2**20 if cuda else 0.0
    # the first epoch pays for lazy set-up (as every trial's first does); the smaller of the next two is the
    # warm one (the other was slowed by something else)
    warm = float(min(r["epoch_seconds"] for r in history[1:]))
    return warm, max(0.0, float(history[0]["epoch_seconds"]) - warm), max(0.0, peak - before), reserved


def measure(backbone, split, *, device: str, threads: int, heads: Sequence[str], batches: Sequence[int],
            height: int, width: int, worst, cache_dtype: str = "float16", probe_epochs: int = 2,
            probe_concurrent: int = 1, cached: dict[str, str] | None = None) -> Bench:
    """Time the backbone's forward (the cache build's path: decoding workers, then the backbone) and, per head
    and batch size, `train`'s training step, eval pass and cold first epoch on random tokens of the real
    shape; then the peak memory of `worst` (the space's most demanding trial config) in real trials,
    `probe_concurrent` at once."""
    import torch

    from sweeper.data.cache import image_batches
    from sweeper.data.parallel import default_workers
    from sweeper.training.config import TrainConfig

    started, load = time.perf_counter(), os.getloadavg()[0]
    cuda = device.startswith("cuda")
    old_threads = torch.get_num_threads()
    try:
        batch = 32 if cuda else 4  # the cache build's batch, in the driver with all of its threads
        n = min(len(split), (2 if cuda else 4) * batch)
        sub = type(split)(split.name, split.root, split.image_paths[:n], split.mask_paths[:n])
        backbone = backbone.to(device)
        seconds, images = [], []
        for x in image_batches(sub, batch_size=batch, height=height, width=width, workers=default_workers(n),
                               pin=cuda):
            t = time.perf_counter()
            backbone(x.to(device, non_blocking=True)).float().cpu()
            seconds.append(time.perf_counter() - t)
            images.append(len(x))
        backbone.to("cpu")
        backbone_s = warm_seconds_per_image(seconds, images)
        grid = (height // backbone.patch_size, width // backbone.patch_size)
        torch.set_num_threads(max(1, threads))  # a trial's steps run on its own threads (--cpus-per-trial)
        steps = 8 if cuda else 3
        val_small, val_large = (8, 40) if cuda else (4, 20)
        train_s, eval_s, working, reserved, cold = {}, {}, {}, {}, {}
        for head in heads:
            base = TrainConfig(head=head, train_metrics=False, device=device, image_height=height,
                               image_width=width)
            for b in batches:
                data = _random_data(b * steps, val_small, grid=grid, embed_dim=backbone.embed_dim, height=height,
                                    width=width)
                key = f"{head}/{b}"
                train_s[key], cold[key], working[key], reserved[key] = _epoch_seconds(
                    base.replace(batch_size=int(b)), data)
            b0 = int(batches[0])
            more = _random_data(b0 * steps, val_large, grid=grid, embed_dim=backbone.embed_dim, height=height,
                                width=width)
            t_more = _epoch_seconds(base.replace(batch_size=b0), more)[0]
            eval_s[head] = max(0.0, (t_more - train_s[f"{head}/{b0}"]) / (val_large - val_small))
            for b in batches:
                key = f"{head}/{b}"
                train_s[key] = max(1e-6, (train_s[key] - val_small * eval_s[head]) / (int(b) * steps))
    finally:
        torch.set_num_threads(old_threads)
    # the trial that needs the most memory, run as the sweep runs it (Ray Tune's session, checkpoints, reused
    # workers, the sweep's trials at once): `steps` of its largest batch per epoch
    probe_cfg = worst.replace(epochs=probe_epochs, device="cpu", image_height=height, image_width=width).to_dict()
    probe = trial_process(probe_cfg, n_train=worst.batch_size * steps, n_val=val_small, grid=grid,
                          embed_dim=backbone.embed_dim, height=height, width=width, dtype=cache_dtype,
                          threads=threads, epochs=probe_epochs, concurrent=probe_concurrent, cached=cached)
    return Bench(device=device, threads=threads, backbone_s_per_image=backbone_s, train_s_per_image=train_s,
                 eval_s_per_image=eval_s, working_set_mb=working, gpu_reserved_mb=reserved,
                 cold_epoch_s=cold, trial_peak_mb=max((t["peak_private_mb"] for t in probe.get("trials", [])),
                                                      default=0.0),
                 trial_probe=probe, seconds=round(time.perf_counter() - started, 1),
                 load_average=(round(load, 2), round(os.getloadavg()[0], 2)))


def make_plan(args, space, *, source, backbone, bench: Bench | None = None) -> dict[str, Any]:
    """Everything `sweeper plan` prints and writes, for the options in `args` (the search's own options), the
    data `source` and the `backbone` (both resolved by the command, as for a search)."""
    from sweeper.data.cache import cache_entries, free_bytes
    from sweeper.data.cache_folder import default_cache_root
    from sweeper.data.dataset import find_split, image_size
    from sweeper.data.parallel import available_cores
    from sweeper.search.ray_local import local_nodes, trial_resources
    from sweeper.training.device import CUDA_CONTEXT_BYTES, memory_budget, resolve_device, tokens_fit

    device = resolve_device(args.device)
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
    cores = available_cores()
    if bench is None:
        from sweeper.data.classes import NUM_CLASSES

        worst = space.to_config(memory_worst_point(space, in_channels=backbone.embed_dim, num_classes=NUM_CLASSES))
        bench = measure(backbone, splits["val"], device=str(device), threads=threads, heads=heads,
                        batches=batches, height=height, width=width, worst=worst,
                        cache_dtype=str(args.cache_dtype), probe_epochs=probe_epochs(space),
                        probe_concurrent=probe_concurrency(concurrent, threads, cores, device.type),
                        cached=_cached_entries(entries))
    probe, factor = bench.trial_probe, 1.0
    if bench.device == "cpu" and "n_train" in probe:  # the probe's trials against the model's same epoch
        c = probe["config"]
        factor = sweep_epoch_factor(probe, trial_epoch_seconds(bench, [str(c["head"])], [int(c["batch_size"])],
                                                               int(probe["n_train"]), int(probe["n_val"]), 1.0))
    slowdown = contention(concurrent, threads, cores, bench.device) * factor
    epoch_s = trial_epoch_seconds(bench, heads, batches, n_train, n_val, slowdown)
    base_epoch_s = trial_epoch_seconds(bench, [str(base.head)], [int(base.batch_size)], n_train, n_val, slowdown)
    cold_s = cold_epoch_seconds(bench, heads, batches, slowdown)
    sims = asha_simulation(space, trials)
    e = trial_epoch_range(space, trials, sims)
    missing = [x for x in entries if not x.exists]
    missing_images = sum(n_train if x.path.parent.name == "tokens" and x.path.name.startswith("train") else
                         n_val if x.path.parent.name == "tokens" else 0 for x in missing)
    cache_s = missing_images * bench.backbone_s_per_image

    start_s = probe.get("start_s")
    # expected: the simulated sweeps' trials in Tune's slots; lower: the lower bound's epochs packed perfectly;
    # upper: every trial at its longest, in the slots
    timing = dict(epoch_s=epoch_s, cold_s=cold_s, concurrent=concurrent, start_s=start_s,
                  baseline_epoch_s=base_epoch_s)
    expected_s = simulated_sweep_seconds(sims, **timing)
    baseline = float(sims[0, 0])  # trial 0 is never stopped
    longest = np.array([[baseline] + [(e["upper"] - baseline) / max(1, trials - 1)] * (trials - 1)])
    upper_s = simulated_sweep_seconds(longest, **timing)
    lower_s = sweep_seconds(e["lower"], epoch_s=epoch_s, cold_s=cold_s, trials=trials, concurrent=concurrent,
                            start_s=start_s, baseline=(baseline, base_epoch_s))

    store = sum(x.nbytes for x in entries)
    tokens_bytes = sum(x.nbytes for x in entries if x.path.parent.name == "tokens")
    host_mb = trial_memory_mb(bench.trial_peak_mb, tokens_bytes, int(probe.get("token_bytes", 0)))
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
        "bench": asdict(bench), "trial_epochs": e, "resources": resources,
        "time": {"trial_epoch_seconds": round(epoch_s, 2), "baseline_epoch_seconds": round(base_epoch_s, 2),
                 "cold_epoch_seconds": round(cold_s, 2),
                 "start_seconds": probe.get("start_s", RAY_START_S),
                 "contention": round(slowdown, 2), "sweep_epoch_factor": round(factor, 3),
                 "cache_seconds": round(cache_s, 1), "sweep_seconds": round(expected_s + cache_s, 1),
                 "sweep_seconds_range": [round(min(lower_s, expected_s) + cache_s, 1),
                                         round(max(upper_s, expected_s) + cache_s, 1)],
                 "naive_phase1_seconds": round(NAIVE_EPOCHS * naive_epoch_seconds(bench, n_train, n_val), 1)},
    }
    if device.type == "cuda":
        import torch

        card = torch.cuda.get_device_properties(device.index or 0).total_memory
        limit = int(args.gpu_memory * 2**30) if args.gpu_memory else None
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
    out["warnings"] = epoch_growth_warnings(probe)
    return out


def _cached_entries(entries) -> dict[str, str] | None:
    """The sweep's plain train and val tokens and labels in the cache (`cache_entries`' first four), when all exist."""
    named = {f"{x.path.name.split('-')[0]}_{x.path.parent.name}": str(x.path) for x in entries[:4]}
    return named if all(x.exists for x in entries[:4]) and len(named) == 4 else None
