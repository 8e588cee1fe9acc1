"""A command's inputs, resolved once for every command: the data (--data or the embedded synthetic set), the
backbone (--backbone, --weights), the feature cache and the train/val data built from them; and the run
folder a command owns while it writes (`in_run_folder`). Used by `baseline`, `search` and `confirm`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sweeper.errors import SweeperError

log = logging.getLogger("sweeper")


class Default(str):
    """A string option's default, told apart from the same value given on the command line (a resume
    refuses options that differ from the sweep's, and must know which ones were given)."""


@dataclass(frozen=True)
class DataSource:
    """Where a command's data comes from and what it is."""

    root: Path
    synthetic: bool  # True for the embedded synthetic default or any `synth` output


def resolve_data(args: argparse.Namespace) -> DataSource:
    """The dataset root: --data, or the embedded synthetic set (generated once into the cache)."""
    from sweeper.data.cache_folder import default_cache_root
    from sweeper.data.synth import generate as synth

    if args.data is None:
        cache_root = args.cache_dir or default_cache_root()
        log.info("no --data given: using the embedded SYNTHETIC desert set (not the real Duality data)")
        return DataSource(root=synth.default_dataset(cache_root / "data"), synthetic=True)
    root = Path(args.data)
    if not root.is_dir():
        raise SweeperError(f"{root}: --data folder does not exist")
    return DataSource(root=root, synthetic=synth.is_synthetic(root))


def resolve_backbone(args: argparse.Namespace, data: DataSource):
    """The frozen backbone named by --backbone ('auto' picks by the kind of data)."""
    from sweeper.model.backbone import create_backbone

    name = args.backbone
    if name == "auto":
        name = "random_vits14" if data.synthetic and args.weights is None else "dinov2_vits14"
    return create_backbone(name, weights=args.weights)  # an untrained backbone warns about itself


@dataclass(frozen=True)
class Prepared:
    """A command's resolved inputs: data source, backbone, train/val data, cache folder."""

    source: DataSource
    backbone: Any
    data: Any  # sweeper.data.cache.TrainData
    cache_root: Path


def prepare(args: argparse.Namespace, *, height: int, width: int, label_mode, use_cache: bool = True,
            train_variants=()) -> Prepared:
    """Resolve --data and --backbone and load train/val, building the feature cache on --device if needed.

    With the cache, the backbone is handed back on the CPU and its GPU memory released: trials never need it.
    """
    from sweeper.data.cache import load_train_data
    from sweeper.data.cache_folder import default_cache_root
    from sweeper.data.dataset import find_split
    from sweeper.training.device import release_memory, resolve_device

    source = resolve_data(args)
    for split in ("train", "val"):  # images and masks there before the backbone (maybe an 85 MB download)
        find_split(source.root, split, warn=False)
    device = resolve_device(getattr(args, "device", "auto"))  # checked before the backbone loads
    backbone = resolve_backbone(args, source).to(device)
    cache_root = args.cache_dir or default_cache_root()
    data = load_train_data(source.root, backbone, height=height, width=width, label_mode=label_mode,
                           cache_root=cache_root, use_cache=use_cache, dtype=args.cache_dtype,
                           allow_unknown=args.allow_unknown_ids, show_progress=not args.quiet,
                           train_variants=train_variants)
    if use_cache:
        backbone.to("cpu")
        release_memory()
    return Prepared(source, backbone, data.with_counts(), cache_root)


def describe_inputs(p: Prepared, args: argparse.Namespace) -> dict[str, Any]:
    """The data and backbone facts written next to every result."""
    return {
        "backbone": {"name": p.backbone.name, "description": p.backbone.description, "trained": p.backbone.trained,
                     "weights_digest": p.backbone.weights_digest,
                     "weights_path": str(Path(args.weights).resolve()) if args.weights else None},
        "cache": {"root": str(Path(p.cache_root).resolve()), "dtype": args.cache_dtype},
        "data": {"root": str(p.source.root.resolve()), "synthetic": p.source.synthetic,
                 "train_images": len(p.data.train.labels), "val_images": len(p.data.val.labels),
                 "class_names": list(p.data.class_names), "train_pixel_counts": p.data.train_pixel_counts().tolist()},
    }


def in_run_folder(run_dir: Path, command: str, body: Callable[[], int]) -> int:
    """Run `body` owning `run_dir` (sweeper.rundir.lock.run_lock); a folder this call created and left empty goes."""
    from sweeper import files
    from sweeper.rundir import lock

    fresh = not run_dir.exists()
    files.ensure_writable_dir(run_dir)
    try:
        with lock.run_lock(run_dir, command):
            return body()
    finally:
        if fresh:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # a start that failed before writing anything leaves no empty folder
