"""The feature cache: the frozen backbone's patch tokens, computed once and memory-mapped.

The backbone is frozen, in eval mode and sees no augmentation, so its tokens
are a pure function of the image. They are computed once per (backbone,
weights digest, input size, dtype, image content) and stored as a `.npy`
file that later runs memory-map; any change of a key part makes a new file.
Labels are cached the same way per (label mode, size, mask content).

`load_train_data` hands the trainer a `sweeper.tokens.TrainData`: `ArrayTokens`
over these entries, or `BackboneTokens` (the backbone in the loop, as phase 1 did).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sweeper.cache_command import (checksum_path, default_cache_root, file_crc32, mark_used, partial_tag,
                                   remove_orphaned_partials)
from sweeper.config import LabelMode
from sweeper.data import CLASS_NAMES, NUM_CLASSES, Split, files_digest, find_split, load_image, load_split_labels
from sweeper.errors import SweeperError
from sweeper.files import atomic_path
from sweeper.progress import progress_bar
from sweeper.tokens import ArrayTokens, BackboneTokens, SplitData, TokenSource, TrainData, variant_key

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the file layout changes: old entries are then never reused
DTYPES = {"float32": np.float32, "float16": np.float16}
CHUNK = 64 << 20  # bytes written at a time where a file's space is allocated by writing zeros


def drop_resident_pages(array: np.ndarray) -> bool:
    """Let the kernel drop a memory-mapped array's resident pages (re-read from the file if touched again).

    After the driver copies the cache into Ray's object store, its mapped pages are a second copy
    counted in its memory; this returns them. False when `array` is not memory-mapped.
    """
    import mmap

    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "_mmap", None) or getattr(base, "base", None)
    if base is None or not hasattr(base, "madvise"):
        return False
    base.madvise(mmap.MADV_DONTNEED)
    return True


CACHE_HINT = "free some space or point --cache-dir (or SWEEPER_CACHE) at another folder"


def _create(tmp: Path, entry: Path, shape: tuple[int, ...], dtype) -> np.memmap:
    """A new .npy at `tmp`, its whole size allocated on disk, mapped for writing.

    The map of a sparse file would be filled page by page, and a page the disk cannot hold is a SIGBUS (a
    `Bus error`, no message, the partial file left behind). Allocated first, a full disk is ENOSPC here: one
    line naming the cache folder and the bytes needed (`files.atomic_path` then removes the partial file).
    """
    needed = int(np.prod(shape)) * np.dtype(dtype).itemsize + 128  # + the usual .npy header, until it is known
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)  # the header, a sparse body
        body, needed = arr.offset, tmp.stat().st_size
        del arr
        fd = os.open(tmp, os.O_RDWR)
        try:
            _allocate(fd, body, needed)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SweeperError(f"{entry.parent}: cannot write a feature cache entry ({os.strerror(e.errno)}: "
                               f"{needed:,} bytes needed); {CACHE_HINT}") from None
        raise
    return np.lib.format.open_memmap(tmp, mode="r+")


def _allocate(fd: int, body: int, size: int) -> None:
    """Allocate a file's `size` bytes on disk; where the file system cannot (or the OS lacks posix_fallocate),
    by writing zeros over its body (from byte `body` on), flushed so that a full disk shows here."""
    fallocate = getattr(os, "posix_fallocate", None)
    try:
        if fallocate is None:
            raise OSError(errno.EOPNOTSUPP, "posix_fallocate is not available")
        fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        zeros = bytes(min(CHUNK, size))
        for at in range(body, size, len(zeros)):
            os.pwrite(fd, zeros[: size - at], at)
        os.fsync(fd)


def _write_atomically(path: Path, fill, shape: tuple[int, ...], dtype) -> None:
    """Create an .npy at a temporary name (files.atomic_path), fill it in place, record its checksum, then
    rename: a killed run never leaves a half file, and a file damaged later is caught when it is opened
    (`_verified`). The checksum lands first: an entry never exists without one. The file's space is allocated
    before the fill (`_create`); partial files that killed builds left are removed first."""
    remove_orphaned_partials(path.parent.parent)
    with atomic_path(path, tag=partial_tag(), hint=CACHE_HINT) as tmp:
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = _create(tmp, path, shape, dtype)
        fill(arr)
        arr.flush()
        del arr
        with atomic_path(checksum_path(path), hint=CACHE_HINT) as check_tmp:
            check_tmp.write_text(json.dumps({"crc32": file_crc32(tmp), "bytes": tmp.stat().st_size}))


def _verified(path: Path) -> bool:
    """Whether a cache entry is intact: its size and checksum are those recorded when it was written and
    it opens as an .npy. A damaged entry is deleted with a warning, so that the caller rebuilds it."""
    reason = None
    try:
        recorded = json.loads(checksum_path(path).read_text())
        size = path.stat().st_size
    except (OSError, ValueError):
        reason = "no checksum was recorded for it (written by an older version or interrupted)"
    else:
        if not isinstance(recorded, dict) or recorded.get("bytes") != size:
            reason = f"it is {size} bytes, not the {recorded.get('bytes') if isinstance(recorded, dict) else '?'} written"
        elif recorded.get("crc32") != file_crc32(path):
            reason = "its checksum differs from the one recorded when it was written"
    if reason is None:
        try:
            np.load(path, mmap_mode="r")
            return True
        except (OSError, ValueError, EOFError) as e:
            reason = f"not a readable .npy file: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    log.warning("feature cache entry %s is damaged (%s): rebuilding it", path, reason)
    for p in (path, checksum_path(path)):
        with contextlib.suppress(OSError):
            p.unlink()
    return False


def token_cache_key(split: Split, backbone, *, height: int, width: int, dtype: str, flip: bool = False) -> str:
    """The cache key: backbone name and weights digest, input size, dtype, mirrored or not, and the images'
    content (plain entries keep the keys they had before flipped ones existed)."""
    return files_digest(split.image_paths, extra=(
        f"format={CACHE_FORMAT}", f"backbone={backbone.name}", f"weights={backbone.weights_digest}",
        f"size={height}x{width}", f"dtype={dtype}", *(("flip=1",) if flip else ())))


def cached_tokens(split: Split, backbone, *, cache_root: Path, height: int, width: int, dtype: str = "float32",
                  batch_size: int | None = None, show_progress: bool = True,
                  flip: bool = False) -> tuple[np.ndarray, bool]:
    """The split's tokens as a read-only memory map, built first if absent; returns (array, was_cached).

    The entry is built on the backbone's device (move the backbone first: a GPU does in a minute what
    a CPU does in twenty), in batches of `batch_size` (default: 32 on a GPU, 4 on the CPU).
    `flip`: the tokens of the mirrored images, an entry of its own (mirroring a token grid is not the
    same: the position embeddings and the patch contents would not be mirrored).
    """
    if dtype not in DTYPES:
        raise SweeperError(f"cache dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    key = token_cache_key(split, backbone, height=height, width=width, dtype=dtype, flip=flip)
    path = Path(cache_root) / "tokens" / f"{split.name}{'-flip' if flip else ''}-{backbone.name}-{key}.npy"
    if path.exists() and _verified(path):
        log.info("feature cache hit: %s", path)
        mark_used(path)
        return np.load(path, mmap_mode="r"), True
    p = backbone.patch_size
    shape = (len(split), height // p, width // p, backbone.embed_dim)
    device = next(backbone.parameters()).device
    batch_size = batch_size or (32 if device.type == "cuda" else 4)
    started = time.perf_counter()

    def fill(arr: np.ndarray) -> None:
        with progress_bar(total=len(split), desc=f"caching {split.name} tokens", enabled=show_progress) as bar:
            for lo in range(0, len(split), batch_size):  # the backbone runs under torch.inference_mode
                idx = range(lo, min(lo + batch_size, len(split)))
                images = torch.stack([load_image(split.image_paths[i], height=height, width=width, flip=flip)
                                      for i in idx])
                arr[lo:lo + len(idx)] = backbone(images.to(device)).float().cpu().numpy().astype(arr.dtype)
                bar.update(len(idx))

    _write_atomically(path, fill, shape, DTYPES[dtype])
    meta = {"split": split.name, "root": str(split.root), "images": len(split), "backbone": backbone.name,
            "weights_digest": backbone.weights_digest, "height": height, "width": width, "dtype": dtype,
            "flip": flip, "shape": list(shape), "seconds": round(time.perf_counter() - started, 3)}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    log.info("feature cache built: %s (%.1f s)", path, meta["seconds"])
    return np.load(path, mmap_mode="r"), False


def cached_labels(split: Split, *, cache_root: Path, height: int, width: int, mode: LabelMode,
                  allow_unknown: bool = False, flip: bool = False) -> np.ndarray:
    """The split's (N, H, W) uint8 labels, decoded once per (mode, size, mask content, flip) and cached."""
    key = files_digest(split.mask_paths, extra=(f"format={CACHE_FORMAT}", f"mode={mode.value}",
                                                f"size={height}x{width}", f"unknown={allow_unknown}",
                                                *(("flip=1",) if flip else ())))
    path = Path(cache_root) / "labels" / f"{split.name}{'-flip' if flip else ''}-{mode.value}-{key}.npy"
    if path.exists() and _verified(path):
        mark_used(path)
        return np.load(path)
    labels = load_split_labels(split, height=height, width=width, mode=mode, allow_unknown=allow_unknown, flip=flip)

    def fill(arr: np.ndarray) -> None:
        arr[:] = labels

    _write_atomically(path, fill, labels.shape, np.uint8)
    return labels


def load_train_data(root: Path, backbone, *, height: int, width: int, label_mode: LabelMode, cache_root: Path,
                    use_cache: bool = True, dtype: str = "float32", allow_unknown: bool = False,
                    show_progress: bool = True, train_variants: Sequence[tuple[LabelMode, bool]] = ()) -> TrainData:
    """Train and val splits of a dataset root, tokens from the cache (built if needed) or from the backbone.

    `train_variants`: other (label mode, mirrored) train splits a sweep's space can ask for (phase 3's
    `train_labels`, `flip_prob`), cached like the plain one; they need the cache (tokens as arrays).
    """
    splits = {name: find_split(root, name) for name in ("train", "val")}
    parts = {}
    for name, split in splits.items():
        labels = cached_labels(split, cache_root=cache_root, height=height, width=width, mode=label_mode,
                               allow_unknown=allow_unknown)
        if use_cache:
            tokens, _ = cached_tokens(split, backbone, cache_root=cache_root, height=height, width=width,
                                      dtype=dtype, show_progress=show_progress)
            source: TokenSource = ArrayTokens(tokens)
        else:
            source = BackboneTokens(split, backbone, height, width)
        parts[name] = SplitData(name, labels, source)
    variants, flipped = {}, None
    for mode, flip in train_variants:
        key = variant_key(LabelMode(mode).value, flip)
        if key == LabelMode(label_mode).value or key in variants:
            continue
        if not use_cache:
            raise SweeperError(f"train split '{key}' needs the feature cache (drop --no-cache)")
        if flip and flipped is None:
            flipped = ArrayTokens(cached_tokens(splits["train"], backbone, cache_root=cache_root, height=height,
                                                width=width, dtype=dtype, show_progress=show_progress, flip=True)[0])
        labels = cached_labels(splits["train"], cache_root=cache_root, height=height, width=width, mode=LabelMode(mode),
                               allow_unknown=allow_unknown, flip=flip)
        variants[key] = SplitData("train", labels, flipped if flip else parts["train"].tokens)
    return TrainData(train=parts["train"], val=parts["val"], embed_dim=backbone.embed_dim,
                     class_names=CLASS_NAMES[:NUM_CLASSES], label_mode=LabelMode(label_mode).value, variants=variants)
