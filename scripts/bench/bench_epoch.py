"""Epoch: phase 1's epoch with the backbone in the loop against cached epochs, on the same N images.

Three runs, interleaved and rotated so that drifting load hits all alike, medians reported:
  naive            `train` on `BackboneTokens`, train metrics on: exactly phase 1's loop
  cached_search    what every search trial runs (phase2.yaml fixes train_metrics: false)
  cached_baseline  `sweeper baseline`: the same work as phase 1, tokens from the cache
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench_setup import HEIGHT, WIDTH, Bench
from common import log, median, token_bytes


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

    def __init__(self, b: Bench) -> None:
        from sweeper.training.config import LabelMode, TrainConfig
        from sweeper.data.cache import load_train_data

        kw = dict(height=HEIGHT, width=WIDTH, label_mode=LabelMode.PHASE1, cache_root=b.work / "cache",
                  show_progress=False)
        before = b.backbone.forward_count
        t = time.perf_counter()
        self.cached = load_train_data(b.root, b.backbone, **kw)
        self.build_s = time.perf_counter() - t
        self.build_images = b.backbone.forward_count - before
        naive = load_train_data(b.root, b.backbone, use_cache=False, **kw)
        self.runs = {
            "naive": (TrainConfig(epochs=1, device="cpu"), naive),
            "cached_search": (TrainConfig(epochs=1, device="cpu", train_metrics=False), self.cached),
            "cached_baseline": (TrainConfig(epochs=1, device="cpu"), self.cached),
        }
        self.times: dict[str, list[float]] = {k: [] for k in self.runs}
        self.cpu: dict[str, list[float]] = {k: [] for k in self.runs}  # CPU seconds, all threads
        self.when: list[str] = []  # 'before' or 'after' the sweep, per repeat
        self.val_iou: dict[str, float] = {}

    def measure(self, repeats: int, when: str) -> None:
        """`repeats` rounds of the three runs, each round's order rotated by one."""
        from sweeper.training.train import train

        names = list(self.runs)
        for _ in range(repeats):
            r = len(self.when)
            for name in names[r % 3:] + names[:r % 3]:
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
        """The epoch figures: times, medians, ratios, the cache's build time and size."""
        times, cached = self.times, self.cached
        med = {k: median(v) for k, v in times.items()}
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
            "cache_bytes": token_bytes(cached),
        }


def describe(e: dict[str, Any]) -> list[str]:
    """The epoch figures in two lines."""
    return [f"epoch ({e['train_images']} train + {e['val_images']} val, medians of {e['repeats']}): naive "
            f"{e['median_s']['naive']:.1f} s, cached search {e['median_s']['cached_search']:.2f} s, cached "
            f"baseline {e['median_s']['cached_baseline']:.2f} s; ratio {e['ratio_vs_search']:.1f}x (search trial), "
            f"{e['ratio_vs_cached_baseline']:.1f}x (cached baseline)",
            f"  cache {e['cache_bytes'] / 2**20:.0f} MB built in {e['cache_build_s']:.1f} s; counting class pixels "
            f"peaks at {e['pixel_count_peak_per_label_byte']:.1f} bytes per label byte"]
