"""What every figure of scripts/bench/bench.py shares: the measured shape, the targets, how much a run repeats,
and the synthetic set and backbone the figures measure on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import REPO, log
from sweeper.search.space import default_space_path

PHASE2 = default_space_path()  # the space the timed sweep runs (search_spaces/phase2.yaml)
HEIGHT, WIDTH = 266, 476  # px, phase 1's training size
BACKBONE = "random_vits14"  # ViT-S/14 shape with seeded weights: same FLOPs as dinov2_vits14, no download
PATCH, EMBED_DIM = 14, 384  # ViT-S/14: a token per 14x14 px patch, 384 channels
GRID = (HEIGHT // PATCH, WIDTH // PATCH)  # tokens per image at the training size
FULL_TRAIN, FULL_VAL = 2857, 317  # images in the real Duality train / val splits
NAIVE_EPOCHS = 10  # phase 1 trains 10 epochs
DEFAULT_IMAGES = 8  # train images of the timed set (bench.py --images); val gets half
TARGETS = {  # the figures the cache and the search are meant to reach
    "epoch_ratio": ">= 10",  # naive epoch / cached search-trial epoch
    "sweep_ratio": "<= 1.0",  # 32-trial sweep incl. cache / one naive 10-epoch run
    "overhead_s_per_trial": "< 1",  # Ray + Optuna + checkpoint wall per extra trial
    "two_trial_memory_mb": "< cache + 2048",  # two concurrent trials, shared pages counted once
}


@dataclass(frozen=True)
class Plan:
    """How much each figure repeats; --quick trades comparability for minutes."""

    per_image_repeats: int  # timed calls per per-image cost (some figures take twice as many)
    epoch_repeats: int  # epoch repeats before the sweep, and as many after it
    sweep_trials: int  # trials of the timed sweep (baseline trial 0 included)
    overhead_trials: int  # near-empty trials, one and two at once
    probe_images: tuple[int, int]  # train images of the small and big memory-probe caches

    @classmethod
    def make(cls, quick: bool) -> "Plan":
        if quick:
            return cls(per_image_repeats=3, epoch_repeats=1, sweep_trials=8, overhead_trials=6, probe_images=(4, 16))
        return cls(per_image_repeats=5, epoch_repeats=2, sweep_trials=32, overhead_trials=16, probe_images=(8, 96))


@dataclass(frozen=True)
class Bench:
    """One benchmark run's inputs: everything a figure needs besides other figures' results."""

    work: Path  # data, caches, sweeps and Ray's temp dir
    root: Path  # the synthetic set (train and val splits)
    images: tuple[int, int]  # its train and val images
    backbone: Any  # random_vits14, built once
    plan: Plan
    env: dict[str, str]  # for the sweep's own process: the source tree first on PYTHONPATH

    @property
    def an_image(self) -> Path:
        return next((self.root / "train" / "Color_Images").glob("*.png"))


def private_ray(work: Path) -> None:
    """Give this process and its children a Ray temp dir of their own: a plain ray.init() joins whatever
    cluster the machine-wide /tmp/ray/ray_current_cluster names, and other jobs here may have one."""
    os.environ["RAY_TMPDIR"] = str(work / "ray-tmp")
    (work / "ray-tmp").mkdir(exist_ok=True)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def make_set(root: Path, images: int = DEFAULT_IMAGES) -> tuple[Path, tuple[int, int]]:
    """The benchmarks' synthetic set in `root`: N train + N/2 val images at 960x540; its root and counts."""
    from sweeper.data.synth import generate as synth

    n = (images, max(1, images // 2))
    log(f"synthetic set: {n[0]} train + {n[1]} val at 960x540")
    return synth.generate(root, train=n[0], val=n[1], test=0, size=(960, 540)), n


def make_bench(work: Path, images: int, quick: bool) -> Bench:
    """The synthetic set (`make_set`) and the backbone, in `work`."""
    from sweeper.model.backbone import create_backbone

    private_ray(work)
    root, n = make_set(work / "set", images)
    return Bench(work=work, root=root, images=n, backbone=create_backbone(BACKBONE), plan=Plan.make(quick),
                 env={**os.environ, "PYTHONPATH": str(REPO)})
