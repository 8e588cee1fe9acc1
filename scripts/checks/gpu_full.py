"""The user's full-size run, measured on one GPU: synthesis, cache, the default sweep, the naive phase-1 epoch.

    PYTHONPATH=. python scripts/checks/gpu_full.py [--work DIR] [--deadline-s 330] [--device cuda]
    PYTHONPATH=. python scripts/checks/gpu_full.py --small --device cpu     # every stage on a tiny set (a dry run)

Every stage runs in this one process's run, so both sides of every ratio come from the same machine at the
same time. Writes results/gpu/full_gpu.json (results/gpu/full_gpu_small.json with --small) after each stage:

  synth    `sweeper synth` of 2,857 train, 317 val, 1,002 test images at 960x540 with --workers (all cores),
           and 32 images with --workers 1 (images per second, side by side)
  cache    train + val tokens (float16, the search's default) and labels: parallel decoding, timed; a
           sequential build of the first 256 val images beside it (images per second, side by side)
  naive    phase 1's epoch with the backbone in the loop, on a subset, scaled to the full splits
  sweep    `sweeper search` with search_spaces/phase2.yaml as shipped, --gpus-per-trial 0.25 (4 at once),
           --gpu-memory 6 (the phase-1 laptop's card): wall time, trial-epochs, median trial-epoch, GPU
           utilisation (nvidia-smi every 0.5 s: mean, p90), each trial's peak, out-of-memory trials
  profile  one cached trial-epoch at phase-1 settings under torch.profiler: kernel time against wall time
A stage that would not finish before --deadline-s is skipped and says so. The backbone is random_vits14:
the ViT-S/14 architecture, the cost of Meta's weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py

from common import REPO, du, median, run_stages, sweeper_cli, work_dir  # noqa: E402

SIZES = {"full": (2857, 317, 1002), "small": (24, 8, 4)}
OUT = REPO / "results" / "gpu"


def percentile(xs: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of a list; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return float(s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))])


def stage_synth(root: Path, sizes: tuple[int, int, int], env: dict[str, str], work: Path) -> dict[str, Any]:
    """The full set with every core, and 32 images with one, timed in this run."""
    from sweeper.data.parallel import available_cores

    one = sweeper_cli("-q", "synth", str(work / "synth-1"), "--train", "31", "--val", "1", "--test", "0",
                      "--workers", "1", env=env)
    cores = available_cores()
    seconds = sweeper_cli("-q", "synth", str(root), "--train", str(sizes[0]), "--val", str(sizes[1]),
                          "--test", str(sizes[2]), "--workers", str(cores), env=env)
    total = sum(sizes)
    return {"images": total, "workers": cores, "seconds": round(seconds, 1),
            "images_per_second": round(total / seconds, 1), "one_worker_images_per_second": round(32 / one, 1),
            "speedup": round((total / seconds) / (32 / one), 2), "bytes": du(root)}


def stage_cache(root: Path, cache: Path, device: str, dtype: str) -> dict[str, Any]:
    """Train + val tokens and labels as the search builds them (parallel decoding), then a sequential build of
    a val subset in a scratch folder for the side-by-side rate."""
    import shutil

    import torch

    from sweeper.model.backbone import create_backbone
    from sweeper.training.config import TrainConfig
    from sweeper.data.dataset import find_split
    from sweeper.data.cache import cached_labels, cached_tokens
    from sweeper.data.parallel import default_workers

    cfg = TrainConfig()
    backbone = create_backbone("random_vits14").to(device)
    splits = [find_split(root, name) for name in ("train", "val")]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    for split in splits:
        cached_labels(split, cache_root=cache, height=cfg.image_height, width=cfg.image_width, mode=cfg.label_mode)
    labels_seconds = time.perf_counter() - t
    for split in splits:
        cached_tokens(split, backbone, cache_root=cache, height=cfg.image_height, width=cfg.image_width,
                      dtype=dtype, show_progress=False)
    sync()
    seconds = time.perf_counter() - t
    n = sum(len(s) for s in splits)
    val = splits[1]
    k = min(256, len(val))
    sub = type(val)(val.name, val.root, val.image_paths[:k], val.mask_paths[:k])
    scratch = cache.parent / "cache-sequential"
    rates = {}
    for workers in (0, default_workers(k)):
        t = time.perf_counter()
        cached_tokens(sub, backbone, cache_root=scratch, height=cfg.image_height, width=cfg.image_width,
                      dtype=dtype, show_progress=False, workers=workers)
        sync()
        rates[workers] = k / (time.perf_counter() - t)
        shutil.rmtree(scratch, ignore_errors=True)
    backbone.to("cpu")
    del backbone
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"images": n, "dtype": dtype, "seconds": round(seconds, 1), "labels_seconds": round(labels_seconds, 1),
            "images_per_second": round(n / seconds, 1), "workers": default_workers(len(splits[0])),
            "subset": k, "sequential_images_per_second": round(rates[0], 1),
            "parallel_images_per_second": round(rates[default_workers(k)], 1),
            "bytes": du(cache / "tokens") + du(cache / "labels")}


def stage_naive(root: Path, device: str, sizes: tuple[int, int, int], small: bool) -> dict[str, Any]:
    """Phase 1's backbone-in-the-loop epoch on a subset, scaled (scripts/bench/rehearsal.py's stage)."""
    import torch

    from rehearsal import stage_naive as naive
    from sweeper.model.backbone import create_backbone

    backbone = create_backbone("random_vits14").to(device)
    out = naive(root, backbone, sizes[:2], subset=(8, 4) if small else (96, 32), device=device)
    backbone.to("cpu")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def trial_peaks(run: Path) -> list[float]:
    """Each trial's peak reserved GPU memory (MB) from trials.csv."""
    import pandas as pd

    trials = pd.read_csv(run / "trials.csv")
    return [float(v) for v in trials.get("gpu_peak_reserved_mb", pd.Series(dtype=float)).dropna()]


def stage_sweep(root: Path, work: Path, env: dict[str, str], device: str, small: bool) -> dict[str, Any]:
    """The default search, as shipped, at a quarter GPU per trial within 6 GiB; nvidia-smi sampled."""
    import pandas as pd

    from gpu_trainers import GpuSampler

    extra = (["--gpus-per-trial", "0.25", "--gpu-memory", "6"] if device.startswith("cuda")
             else ["--device", "cpu", "--max-concurrent", "2"])
    if small:
        extra += ["--trials", "3"]
    with GpuSampler() as sampler:
        seconds = sweeper_cli("-q", "search", "--data", str(root), "--out", str(work / "runs"), "--name", "full",
                              *extra, env=env, check=False)
    run = work / "runs" / "full"
    if not (run / "trials.csv").is_file():
        return {"ok": False, "error": "the sweep wrote no trials.csv", "seconds": round(seconds, 1)}
    trials, history = pd.read_csv(run / "trials.csv"), pd.read_csv(run / "history.csv")
    info = json.loads((run / "sweep.json").read_text())
    utils = [u for _, u in sampler.samples]
    peaks = trial_peaks(run)
    return {"ok": True, "wall_seconds": round(seconds, 1), "trials": len(trials),
            "statuses": trials.status.value_counts().to_dict(),
            "devices": trials.device.dropna().unique().tolist(), "gpu_share": extra[1] if "--gpus-per-trial" in extra
            else 0, "max_concurrent": info["options"]["max_concurrent"],
            "trial_epochs": int(trials.epochs_run.sum()), "stopped_early": int(trials.stopped_early.sum()),
            "trial_epoch_seconds_median": round(float(history.epoch_seconds.median()), 2),
            "gpu_util_mean": round(sum(utils) / len(utils), 1) if utils else None,
            "gpu_util_p90": percentile(utils, 90), "gpu_memory_peak_mb": sampler.summary()["gpu_peak_memory_mb"],
            "trial_peak_reserved_mb": {"min": min(peaks), "median": median(peaks), "max": max(peaks)} if peaks
            else None,
            "out_of_memory": int(trials.out_of_memory.sum()), "best_val_iou": float(trials.best_val_iou.max()),
            "baseline_trial_val_iou": float(trials[trials.baseline].best_val_iou.iloc[0])
            if trials.baseline.any() else None}


def stage_profile(root: Path, cache: Path, device: str, dtype: str) -> dict[str, Any]:
    """One cached trial-epoch at phase-1 settings (a search trial's: no train metrics) under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    from sweeper.model.backbone import create_backbone
    from sweeper.training.config import TrainConfig
    from sweeper.data.cache import load_train_data
    from sweeper.training.train import train

    cfg = TrainConfig(train_metrics=False, device=device, epochs=1)
    data = load_train_data(root, create_backbone("random_vits14"), height=cfg.image_height, width=cfg.image_width,
                           label_mode=cfg.label_mode, cache_root=cache, dtype=dtype, show_progress=False)
    train(cfg, data)  # warm-up: CUDA kernels loaded, allocator grown
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        train(cfg, data)
        wall = time.perf_counter() - t
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events) if cuda else 0.0
    top = sorted(events, key=lambda e: e.self_device_time_total if cuda else e.self_cpu_time_total, reverse=True)[:8]
    steps = -(-len(data.train.labels) // cfg.batch_size)
    return {"epoch_wall_seconds": round(wall, 2), "kernel_seconds": round(kernel_us / 1e6, 2),
            "kernel_share_of_wall": round(kernel_us / 1e6 / wall, 3) if cuda else None, "train_steps": steps,
            "wall_ms_per_step": round(1000 * wall / steps, 2),
            "kernel_ms_per_step": round(kernel_us / 1e3 / steps, 3) if cuda else None,
            "top_ops": [{"name": e.key, "calls": e.count,
                         "device_ms": round(e.self_device_time_total / 1e3, 1) if cuda else None,
                         "cpu_ms": round(e.self_cpu_time_total / 1e3, 1)} for e in top]}


def run(work: Path, *, device: str, small: bool, deadline: float, out_file: Path) -> dict[str, Any]:
    """Every stage in order, each skipped (and said so) when the deadline is too near; the JSON after each."""
    import torch

    sizes = SIZES["small" if small else "full"]
    root, cache = work / "data", work / "cache"
    env = {**os.environ, "SWEEPER_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
                              "torch": torch.__version__, "sizes": list(sizes), "cpus": os.cpu_count(),
                              "backbone": "random_vits14 (ViT-S/14 architecture, untrained: SYNTHETIC data)"}
    dtype = "float16"  # the search's default cache dtype
    stages = [("synth", 60, lambda: stage_synth(root, sizes, env, work)),
              ("cache", 40, lambda: stage_cache(root, cache, device, dtype)),
              ("naive", 30, lambda: stage_naive(root, device, sizes, small)),
              ("sweep", 150, lambda: stage_sweep(root, work, env, device, small)),
              ("profile", 30, lambda: stage_profile(root, cache, device, dtype))]
    run_stages(stages, result, seconds_left=lambda: deadline - time.time(), out_file=out_file, tag="gpu_full")
    c, n, s = result.get("cache", {}), result.get("naive", {}), result.get("sweep", {})
    if "seconds" in c and "full_epoch_seconds" in n and "wall_seconds" in s:
        result["sweep_plus_cache_over_naive_10_epochs"] = round(
            (s["wall_seconds"] + c["seconds"]) / (10 * n["full_epoch_seconds"]), 3)
    out_file.write_text(json.dumps(result, indent=2, default=str))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="folder for data, cache and runs (default: a temp folder, removed)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a tiny set: every stage in a minute (a dry run)")
    ap.add_argument("--deadline-s", type=float, default=330, help="seconds from now the stages must end by")
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_full: no CUDA GPU visible to torch (use --device cpu --small for a dry run)", file=sys.stderr)
        return 2
    out_file = OUT / ("full_gpu_small.json" if args.small else "full_gpu.json")
    with work_dir(args.work, prefix="gpu_full-") as work:
        result = run(work, device=args.device, small=args.small, deadline=time.time() + args.deadline_s,
                     out_file=out_file)
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=1, default=str))
    return 0 if all(result.get(k, {}).get("ok", True) and "skipped" not in result.get(k, {})
                    for k in ("synth", "cache", "naive", "sweep", "profile")) else 1


if __name__ == "__main__":
    sys.exit(main())
