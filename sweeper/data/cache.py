"""The feature cache: the frozen backbone's patch tokens, computed once and memory-mapped.

The backbone is frozen, in eval mode and sees no augmentation, so its tokens
are a pure function of the image. They are computed once per (backbone,
weights digest, input size, dtype, image content) and stored as a `.npy`
file that later runs memory-map; any change of a key part makes a new file.
Labels are cached the same way per (label mode, size, mask content).

`load_train_data` hands the trainer a `sweeper.data.tokens.TrainData`: `ArrayTokens`
over these entries, or `BackboneTokens` (the backbone in the loop, as phase 1 did).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from sweeper.bar import progress_bar
from sweeper.data.cache_folder import checksum_path, file_crc32, mark_used, partial_tag, remove_orphaned_partials
from sweeper.data.classes import CLASS_NAMES, NUM_CLASSES, LabelMode
from sweeper.data.dataset import Split, files_digest, find_split, load_image, load_split_labels
from sweeper.data.parallel import default_workers
from sweeper.data.tokens import ArrayTokens, BackboneTokens, SplitData, TokenSource, TrainData, variant_key
from sweeper.errors import SweeperError
from sweeper.files import atomic_path, size_text

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the file layout changes: old entries are then never reused
DTYPES = {"float32": np.float32, "float16": np.float16}
NPY_HEADER_BYTES = 128  # a .npy file's header, before its array
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
    needed = int(np.prod(shape)) * np.dtype(dtype).itemsize + NPY_HEADER_BYTES  # until the header is known
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


def token_entry_path(split: Split, backbone, *, cache_root: Path, height: int, width: int, dtype: str,
                     flip: bool = False) -> Path:
    """Where the tokens entry of this split, backbone, size, dtype (and mirroring) lives in the cache."""
    key = token_cache_key(split, backbone, height=height, width=width, dtype=dtype, flip=flip)
    return Path(cache_root) / "tokens" / f"{split.name}{'-flip' if flip else ''}-{backbone.name}-{key}.npy"


def label_entry_path(split: Split, *, cache_root: Path, height: int, width: int, mode: LabelMode,
                     allow_unknown: bool = False, flip: bool = False) -> Path:
    """Where the labels entry of this split, label mode and size (and mirroring) lives in the cache."""
    key = files_digest(split.mask_paths, extra=(f"format={CACHE_FORMAT}", f"mode={mode.value}",
                                                f"size={height}x{width}", f"unknown={allow_unknown}",
                                                *(("flip=1",) if flip else ())))
    return Path(cache_root) / "labels" / f"{split.name}{'-flip' if flip else ''}-{mode.value}-{key}.npy"


def cached_tokens(split: Split, backbone, *, cache_root: Path, height: int, width: int, dtype: str = "float32",
                  batch_size: int | None = None, show_progress: bool = True,
                  flip: bool = False, workers: int | None = None) -> tuple[np.ndarray, bool]:
    """The split's tokens as a read-only memory map, built first if absent; returns (array, was_cached).

    The entry is built on the backbone's device (move the backbone first: a GPU does in a minute what
    a CPU does in twenty), in batches of `batch_size` (default: 32 on a GPU, 4 on the CPU).
    `flip`: the tokens of the mirrored images, an entry of its own (mirroring a token grid is not the
    same: the position embeddings and the patch contents would not be mirrored).
    Images are decoded by `workers` processes (default: `default_workers` for the split's size) ahead of the
    backbone, into pinned memory on a GPU, so decoding overlaps the forward pass; the entry's bytes do not
    depend on it.
    """
    if dtype not in DTYPES:
        raise SweeperError(f"cache dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    path = token_entry_path(split, backbone, cache_root=cache_root, height=height, width=width, dtype=dtype,
                            flip=flip)
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
        batches = image_batches(split, batch_size=batch_size, height=height, width=width, flip=flip,
                                workers=default_workers(len(split)) if workers is None else workers,
                                pin=device.type == "cuda")
        with progress_bar(total=len(split), desc=f"caching {split.name} tokens", enabled=show_progress) as bar:
            for lo, images in zip(range(0, len(split), batch_size), batches):  # under torch.inference_mode
                out = backbone(images.to(device, non_blocking=True))
                arr[lo:lo + len(images)] = out.float().cpu().numpy().astype(arr.dtype)
                bar.update(len(images))

    _write_atomically(path, fill, shape, DTYPES[dtype])
    meta = {"split": split.name, "root": str(split.root), "images": len(split), "backbone": backbone.name,
            "weights_digest": backbone.weights_digest, "height": height, "width": width, "dtype": dtype,
            "flip": flip, "shape": list(shape), "seconds": round(time.perf_counter() - started, 3)}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    log.info("feature cache built: %s (%.1f s)", path, meta["seconds"])
    return np.load(path, mmap_mode="r"), False


class _ImageBatches(torch.utils.data.Dataset):
    """Batch `b` of a split's images, decoded and stacked; a one-line error message for an unreadable file
    (a DataLoader would re-raise a worker's exception with its traceback inside the message)."""

    def __init__(self, paths: Sequence[Path], batch_size: int, height: int, width: int, flip: bool) -> None:
        self.paths, self.batch_size, self.size, self.flip = list(paths), batch_size, (height, width), flip

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getitem__(self, b: int) -> torch.Tensor | str:
        lo = b * self.batch_size
        try:
            return torch.stack([load_image(p, height=self.size[0], width=self.size[1], flip=self.flip)
                                for p in self.paths[lo:lo + self.batch_size]])
        except SweeperError as e:
            return str(e)


def image_batches(split: Split, *, batch_size: int, height: int, width: int, flip: bool = False, workers: int = 0,
                  pin: bool = False) -> Iterator[torch.Tensor]:
    """The split's images as (B, 3, H, W) batches in file order, decoded by `workers` processes a few batches
    ahead (`pin`: into page-locked memory, for an asynchronous copy to the GPU)."""
    parallel = workers > 1
    loader = torch.utils.data.DataLoader(
        _ImageBatches(split.image_paths, batch_size, height, width, flip), batch_size=None,
        num_workers=workers if parallel else 0, pin_memory=pin, prefetch_factor=2 if parallel else None,
        multiprocessing_context="spawn" if parallel else None)  # spawned: see sweeper.data.parallel
    for batch in loader:
        if isinstance(batch, str):
            raise SweeperError(batch)
        yield batch


def cached_labels(split: Split, *, cache_root: Path, height: int, width: int, mode: LabelMode,
                  allow_unknown: bool = False, flip: bool = False) -> np.ndarray:
    """The split's (N, H, W) uint8 labels, decoded once per (mode, size, mask content, flip) and cached."""
    path = label_entry_path(split, cache_root=cache_root, height=height, width=width, mode=mode,
                            allow_unknown=allow_unknown, flip=flip)
    if path.exists() and _verified(path):
        mark_used(path)
        return np.load(path)
    labels = load_split_labels(split, height=height, width=width, mode=mode, allow_unknown=allow_unknown, flip=flip,
                               workers=default_workers(len(split)))

    def fill(arr: np.ndarray) -> None:
        arr[:] = labels

    _write_atomically(path, fill, labels.shape, np.uint8)
    return labels


@dataclass(frozen=True)
class CacheEntry:
    """One entry a run needs: where it lives, its size, whether it is already there."""

    path: Path
    nbytes: int
    exists: bool
    dtype: str | None = None  # a tokens entry's dtype (None: labels)


def cache_entries(splits, backbone, *, cache_root: Path, height: int, width: int, label_mode: LabelMode,
                  dtype: str, allow_unknown: bool = False,
                  train_variants: Sequence[tuple[LabelMode, bool]] = ()) -> list[CacheEntry]:
    """Every tokens and labels entry `load_train_data` would read or build, with its exact size."""
    grid = (height // backbone.patch_size) * (width // backbone.patch_size)
    token_bytes = grid * backbone.embed_dim * np.dtype(DTYPES[dtype]).itemsize
    wanted = [(name, LabelMode(label_mode), False) for name in splits]
    wanted += [("train", LabelMode(m), bool(f)) for m, f in train_variants]
    out, seen = [], set()
    for name, mode, flip in wanted:
        split = splits[name]
        paths = [(label_entry_path(split, cache_root=cache_root, height=height, width=width, mode=mode,
                                   allow_unknown=allow_unknown, flip=flip), len(split) * height * width),
                 (token_entry_path(split, backbone, cache_root=cache_root, height=height, width=width, dtype=dtype,
                                   flip=flip), len(split) * token_bytes)]
        for (path, nbytes), kind in zip(paths, (None, dtype)):
            if path not in seen:
                seen.add(path)
                out.append(CacheEntry(path, nbytes + NPY_HEADER_BYTES, path.exists(), kind))
    return out


def check_cache_fits(entries: Sequence[CacheEntry], cache_root: Path) -> None:
    """Refuse, in one line and before any entry is built, entries that the cache's disk cannot hold."""
    need = sum(e.nbytes for e in entries if not e.exists)
    if not need:
        return
    free = free_bytes(cache_root)
    if need > free:
        halve = any(e.dtype == "float32" for e in entries if not e.exists)  # float16 tokens take half
        raise SweeperError(f"{cache_root}: the feature cache needs {size_text(need)} more and its disk has "
                           f"{size_text(free)} free: free some space"
                           + (", point --cache-dir at a larger disk, or use --cache-dtype float16" if halve else
                              " or point --cache-dir at a larger disk"))


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def load_train_data(root: Path, backbone, *, height: int, width: int, label_mode: LabelMode, cache_root: Path,
                    use_cache: bool = True, dtype: str = "float32", allow_unknown: bool = False,
                    show_progress: bool = True, train_variants: Sequence[tuple[LabelMode, bool]] = ()) -> TrainData:
    """Train and val splits of a dataset root, tokens from the cache (built if needed) or from the backbone.

    `train_variants`: other (label mode, mirrored) train splits a sweep's space can ask for (phase 3's
    `train_labels`, `flip_prob`), cached like the plain one; they need the cache (tokens as arrays).
    """
    splits = {name: find_split(root, name) for name in ("train", "val")}
    if use_cache:  # an entry that cannot fit is refused before any is built (a full disk mid-build costs hours)
        check_cache_fits(cache_entries(splits, backbone, cache_root=cache_root, height=height, width=width,
                                       label_mode=label_mode, dtype=dtype, allow_unknown=allow_unknown,
                                       train_variants=train_variants), cache_root)
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
