"""Procedural desert scenes written in the exact layout and mask format of the Duality AI offroad dataset.

The real dataset cannot be redistributed, so tests, smoke runs and demos use
scenes drawn here instead:

    OUT/{train,val,test}/Color_Images/000000.png   8-bit RGB
    OUT/{train,val,test}/Segmentation/000000.png   16-bit PNG of raw ids (100 ... 10000)

A scene is a horizon line (with an occasional distant ridge), a sky with a
gradient and clouds, a ground layer of sand, dry grass, pebbles and flowers
textured in ground-plane coordinates (so patches shrink toward the horizon),
then trees, bushes, rocks and logs sized by their distance and painted far to
near. Every class has its own colours and texture, muddied by per-image
colour drift, colour temperature and exposure, so it is learnable from local
appearance but not trivially. The test split (``shifted=True``) is a darker,
rockier location with a low horizon, like the real test images.

Class shares are steered toward the reference train shares: the ground layer
thresholds its noise fields at per-image quantiles and objects are placed up
to a per-image area budget. All geometry is drawn in image-relative units
before any pixel exists, so one scene rendered at 240x135 and at 960x540 has
the same layout and the same class shares up to rasterisation.

Determinism and safety: image ``i`` of a split uses
``np.random.default_rng([seed, split_code, i])``, so the same seed gives
byte-identical files and a larger set starts with the smaller one. `generate`
writes into a sibling folder ``OUT.tmp-<pid>-<hex>``, writes ``synth.json``
there last, then renames the folder onto OUT: OUT is either absent, the old
set or the complete new set, never half written. A failed or interrupted run
removes its temporary folder; only a hard kill leaves an ``OUT.tmp-*`` sibling
behind, which nothing reads and which may be deleted.

This module writes datasets; `sweeper.data.synth.scene` draws one scene and
`sweeper.data.synth.places` holds what the two places look like, as data.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from sweeper.data.parallel import available_cores, default_workers, pool_map
from sweeper.data.synth.scene import render_scene
from sweeper.errors import SweeperError

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")  # the index is the split code in the per-image seed
MARKER = "synth.json"  # written last: its presence means the set is complete
VERSION = 1  # bump whenever a change alters the pixels, so cached sets are not mistaken for new ones


# --------------------------------------------------------------------------- writing sets


def _spec(seed: int, counts: Mapping[str, int], size: tuple[int, int]) -> dict[str, object]:
    return {"generator": "sweeper.synth", "version": VERSION, "seed": seed, **counts, "size": list(size)}


def _read_marker(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == "sweeper.synth" else None


def is_synthetic(root: str | os.PathLike[str]) -> bool:
    """Whether a dataset root (or a test folder inside one) was written by this generator."""
    root = Path(root)
    return _read_marker(root) is not None or (root.parent != root and _read_marker(root.parent) is not None)


def _check_target(out: Path) -> None:
    """Refuse a target that exists and is neither empty nor an earlier synthetic set."""
    if out.is_symlink():
        raise SweeperError(f"{out} is a symbolic link; give the folder it points to, since the set replaces it whole")
    if out.exists() and not out.is_dir():
        raise SweeperError(f"{out} exists and is not a folder; choose a new or empty folder for the synthetic dataset")
    if out.is_dir() and any(out.iterdir()) and _read_marker(out) is None:
        raise SweeperError(f"{out} is not empty and holds no synthetic dataset ({MARKER} missing); "
                           "choose a new or empty folder")


def _install(tmp: Path, out: Path, spec: dict[str, object]) -> None:
    """Move the finished set onto `out`; if a concurrent run already put the same set there, keep theirs."""
    for _ in range(5):
        try:
            os.rename(tmp, out)  # atomic; succeeds when out is absent or an empty folder
            return
        except OSError:
            pass
        if _read_marker(out) == spec:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if out.exists():
            _check_target(out)
            aside = out.with_name(f"{out.name}.old-{secrets.token_hex(4)}")
            try:
                os.rename(out, aside)  # an earlier synthetic set: replaced as a whole, never merged
            except FileNotFoundError:
                continue
            shutil.rmtree(aside, ignore_errors=True)
    raise SweeperError(f"could not move the generated dataset into {out}; another process keeps replacing it")


def generate(out_dir: str | os.PathLike[str], *, train: int, val: int, test: int, seed: int = 0,
             size: tuple[int, int] = (960, 540), progress: Callable[[int, int], None] | None = None,
             workers: int | None = None) -> Path:
    """Write a synthetic set in the offroad layout to `out_dir` (new, empty or an earlier synthetic set), with
    `workers` processes (default: every available core); the bytes do not depend on it."""
    out = Path(out_dir)
    counts = {"train": train, "val": val, "test": test}
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise SweeperError(f"synthetic dataset: '{name}' must be a whole number >= 0 (got {n!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SweeperError(f"synthetic dataset: 'seed' must be a whole number >= 0 (got {seed!r})")
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 16
                                 for s in size):
        raise SweeperError(f"synthetic dataset: size must be (width, height), each a whole number >= 16 (got {size!r})")
    width, height = int(size[0]), int(size[1])
    seed = int(seed)
    spec = _spec(seed, counts, (width, height))
    if _read_marker(out) == spec:
        log.info("synthetic dataset already complete at %s", out)
        return out
    _check_target(out)

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise SweeperError(f"cannot write the synthetic dataset next to {out}: {e.strerror or e}") from None
    jobs = [(tmp, split, code, index, seed, width, height)
            for code, split in enumerate(SPLITS) for index in range(counts[split])]
    workers = max(1, min(workers or default_workers(len(jobs), limit=available_cores()) or 1, len(jobs)))
    log.info("generating %d synthetic images (%dx%d, seed %d, %d workers) into %s", len(jobs), width, height, seed,
             workers, out)
    try:
        for split in SPLITS:
            (tmp / split / "Color_Images").mkdir(parents=True)
            (tmp / split / "Segmentation").mkdir(parents=True)
        # Each image has its own seed, so any number of workers writes the same bytes.
        for done, _ in enumerate(pool_map(_write_scene, jobs, workers=workers), 1):
            if progress is not None:
                progress(done, len(jobs))
        (tmp / MARKER).write_text(json.dumps(spec, indent=1) + "\n")
        _install(tmp, out, spec)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SweeperError(f"cannot write the synthetic dataset to {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("synthetic dataset ready at %s", out)
    return out


def _write_scene(job: tuple[Path, str, int, int, int, int, int]) -> None:
    """Render and write image `index` of a split: the pool's unit of work."""
    tmp, split, code, index, seed, width, height = job
    rng = np.random.default_rng([seed, code, index])
    rgb, mask = render_scene(rng, width=width, height=height, shifted=split == "test")
    name = f"{index:06d}.png"
    # Low zlib effort: the noisy images barely compress further and writing dominates otherwise.
    Image.fromarray(rgb).save(tmp / split / "Color_Images" / name, compress_level=1)
    Image.fromarray(mask).save(tmp / split / "Segmentation" / name, compress_level=1)  # uint16 -> 16-bit PNG


def default_dataset(cache_root: str | os.PathLike[str], *, train: int = 32, val: int = 16, test: int = 16,
                    seed: int = 0) -> Path:
    """The small default synthetic set under `cache_root`, generated on first use and reused after."""
    name = f"synthetic-v{VERSION}-s{seed}-{train}-{val}-{test}"
    return generate(Path(cache_root) / name, train=train, val=val, test=test, seed=seed)
