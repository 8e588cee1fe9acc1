"""The Duality offroad dataset on disk: folders, the phase-1 class table and label resizing.

Layout (train/val share a root; the test set has the two folders directly):

    ROOT/train/Color_Images/*.png   RGB 960x540
    ROOT/train/Segmentation/*.png   same names, 16-bit raw ids
    ROOT/val/...                    likewise
    TEST/Color_Images, TEST/Segmentation

Everything here reproduces what the organisers' phase-1 script does, quirks
included, except where a `LabelMode` other than `phase1` is asked for.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sweeper.data.classes import KNOWN_RAW_IDS, NUM_CLASSES, PHASE1_CLASS_TABLE, LabelMode
from sweeper.data.parallel import pool_map
from sweeper.errors import SweeperError

log = logging.getLogger(__name__)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_DIR, MASK_DIR = "Color_Images", "Segmentation"


@dataclass(frozen=True)
class Split:
    """One folder pair of images and masks, files in sorted order."""

    name: str  # 'train', 'val', 'test'
    root: Path  # the folder holding Color_Images and Segmentation
    image_paths: tuple[Path, ...]
    mask_paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.image_paths)


def find_split(root: str | Path, name: str, *, warn: bool = True) -> Split:
    """The split `name` under a dataset root: ROOT/name/{Color_Images,Segmentation}, or ROOT itself for a test folder.

    `warn`: log one warning with the count of files the split leaves out (see `list_split`)."""
    root = Path(root)
    if not root.is_dir():
        raise SweeperError(f"{root}: data folder does not exist")
    folder = root / name
    if not (folder / IMAGE_DIR).is_dir() and (root / IMAGE_DIR).is_dir():
        folder = root  # a test folder has the two subfolders directly
    return list_split(folder, name, warn=warn)


def list_split(folder: Path, name: str, *, warn: bool = True) -> Split:
    """List a folder's image/mask pairs (sorted by name); every image must have its mask.

    Images other than .png and masks without an image are left out, with one warning giving their count; a .png
    that is a link to nowhere is an error, as an unreadable image is."""
    img_dir, mask_dir = folder / IMAGE_DIR, folder / MASK_DIR
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise SweeperError(f"{d}: folder is missing (expected {folder}/{IMAGE_DIR} and {folder}/{MASK_DIR})")
    # Phase 1 used an unsorted os.listdir; sorting makes runs repeatable across file systems.
    pngs = sorted(p for p in img_dir.iterdir() if p.suffix.lower() == ".png")
    for p in pngs:
        check_not_broken_link(p)
    images = [p for p in pngs if p.is_file()]
    if not images:
        raise SweeperError(f"{img_dir}: no .png images in folder")
    masks = []
    for p in images:
        m = mask_dir / p.name
        check_not_broken_link(m)
        if not m.is_file():
            raise SweeperError(f"{p}: image has no mask (expected {m})")
        masks.append(m)
    if warn:
        other = sum(1 for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() != ".png")
        names = {p.name for p in images}
        orphans = sum(1 for p in mask_dir.iterdir() if p.is_file() and p.name not in names)
        if other or orphans:
            log.warning("%s: left out %d image file(s) that are not .png and %d mask(s) without an image; "
                        "%d image/mask pairs used", folder, other, orphans, len(images))
    return Split(name=name, root=folder, image_paths=tuple(images), mask_paths=tuple(masks))


def check_not_broken_link(path: Path) -> None:
    """A symbolic link that leads to no file (its target missing, or a loop of links) is an image that cannot be
    opened: one line naming it, not a file silently left out."""
    try:
        os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise SweeperError(f"{path}: a symbolic link to a missing file ({os.readlink(path)})") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SweeperError(f"{path}: a loop of symbolic links, not a readable PNG") from None
        raise SweeperError(f"{path}: cannot read ({e.strerror or e})") from None


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SweeperError(f"{path}: not a readable PNG, the file is damaged ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'corrupt'})") from None


def load_image(path: Path, *, height: int, width: int, flip: bool = False) -> torch.Tensor:
    """Phase-1 image transform: bilinear resize, [0,1] floats, ImageNet normalisation -> (3, H, W).

    `flip` mirrors the image left to right first (the flip augmentation's images)."""
    img = _open(path).convert("RGB")
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.resize((width, height), Image.BILINEAR)  # what torchvision's Resize does for a PIL image
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub(mean).div(std)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    return _open(path).size


def load_raw_mask(path: Path, *, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask's raw ids as an int64 array; optionally check its (width, height)."""
    img = _open(path)
    if expect_size is not None and img.size != expect_size:
        raise SweeperError(
            f"{path}: mask is {img.size[0]}x{img.size[1]} but its image is {expect_size[0]}x{expect_size[1]}")
    raw = np.asarray(img)
    if raw.ndim != 2:  # a coloured mask: its 3-4 values per pixel are not raw ids (and would count as pixels)
        raise SweeperError(f"{path}: mask is {img.mode} ({raw.shape[-1]} values per pixel); expected one raw "
                           f"class id per pixel (16-bit grey, as the Duality Segmentation/ files are)")
    return raw.astype(np.int64)


def map_classes(raw: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Apply the phase-1 table: uint8 class ids, plus {unknown raw id: pixel count}."""
    out = np.zeros(raw.shape, dtype=np.uint8)  # zeros: unmapped ids (Flowers, unknown) end up class 0
    for raw_id, cls in PHASE1_CLASS_TABLE.items():
        out[raw == raw_id] = cls
    unknown: dict[int, int] = {}
    ids, counts = np.unique(raw, return_counts=True)
    for i, c in zip(ids.tolist(), counts.tolist()):
        if i not in KNOWN_RAW_IDS:
            unknown[int(i)] = int(c)
    return out, unknown


def resize_labels(classes: np.ndarray, *, height: int, width: int, mode: LabelMode) -> np.ndarray:
    """Resize a class-id map to (height, width) as phase 1 does (`phase1`) or exactly (`nearest`)."""
    img = Image.fromarray(classes.astype(np.uint8), mode="L")
    if mode == LabelMode.NEAREST:
        return np.array(img.resize((width, height), Image.NEAREST), dtype=np.uint8)
    # Phase 1: torchvision Resize with its default (bilinear) filter on the 8-bit
    # class map, ToTensor (/255 in float32), *255, then .long() truncation. This
    # invents in-between ids on edges and float round-off can drop a value by one.
    resized = np.array(img.resize((width, height), Image.BILINEAR), dtype=np.uint8)
    as_float = torch.from_numpy(resized).to(torch.float32).div(255)
    return (as_float * 255).long().numpy().astype(np.uint8)


def load_labels(mask_path: Path, *, image_path: Path, height: int, width: int, mode: LabelMode,
                allow_unknown: bool = False, flip: bool = False) -> np.ndarray:
    """A mask file as training labels: checked against its image, class-mapped, resized.

    `flip` mirrors the mask before it is resized, as `load_image` mirrors the image: the labels of the
    flipped image, by construction (not a flip of the resized labels)."""
    raw = load_raw_mask(mask_path, expect_size=image_size(image_path))
    if flip:
        raw = np.ascontiguousarray(raw[:, ::-1])
    classes, unknown = map_classes(raw)
    if unknown and not allow_unknown:
        total = sum(unknown.values())
        ids = (f"id {next(iter(unknown))}" if len(unknown) == 1 else  # its count is the total
               "ids " + ", ".join(f"{i} ({c} px)" for i, c in sorted(unknown.items())[:5]))
        raise SweeperError(
            f"{mask_path}: {total} pixels have unknown raw {ids}; phase 1 maps them to class 0 "
            f"(pass --allow-unknown-ids to accept that)")
    if unknown:
        log.warning("%s: %d pixels with unknown ids %s mapped to class 0", mask_path, sum(unknown.values()), sorted(unknown))
    return resize_labels(classes, height=height, width=width, mode=mode)


def load_split_labels(split: Split, *, height: int, width: int, mode: LabelMode,
                      allow_unknown: bool = False, flip: bool = False, workers: int = 1) -> np.ndarray:
    """All of a split's labels as one (N, H, W) uint8 array (of the mirrored images with `flip`), decoded by
    `workers` processes (the same array for any number)."""
    out = np.empty((len(split), height, width), dtype=np.uint8)
    options = dict(height=height, width=width, mode=mode, allow_unknown=allow_unknown, flip=flip)
    jobs = [(mask, img, options) for img, mask in zip(split.image_paths, split.mask_paths)]
    for i, labels in enumerate(pool_map(_labels_of, jobs, workers=workers, chunksize=8)):
        out[i] = labels
    return out


def _labels_of(job: tuple[Path, Path, dict]) -> np.ndarray:
    """`load_labels` of one (mask, image, options): the decoding pool's unit of work."""
    mask, image, options = job
    return load_labels(mask, image_path=image, **options)


def class_pixel_counts(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixels of each class in a label array, as int64 (num_classes,)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    flat = labels.reshape(len(labels), -1) if labels.ndim > 1 else labels.reshape(1, -1)
    for lo in range(0, len(flat), 16):  # bincount widens uint8 to int64: chunks keep that copy small
        counts += np.bincount(flat[lo:lo + 16].reshape(-1), minlength=num_classes)[:num_classes]
    return counts


def class_frequencies(counts: np.ndarray) -> np.ndarray:
    """Pixel share of each class (sums to 1)."""
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts), dtype=np.float64)


def files_digest(paths: Iterable[Path], *, extra: Sequence[str] = ()) -> str:
    """sha256 over the names and bytes of files (and extra strings): a content key for caches."""
    h = hashlib.sha256()
    for s in extra:
        h.update(s.encode() + b"\0")
    for p in paths:
        h.update(os.fsencode(p.name) + b"\0")  # a name's bytes: Linux names need not be UTF-8
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def dataset_fingerprint(root: str | Path) -> str:
    """A content key of a dataset's train and val splits: every image's and mask's name and bytes.

    A resumed sweep compares it with the one recorded at the start, so trials are never scored on two sets.
    """
    splits = [find_split(root, name, warn=False) for name in ("train", "val")]  # loading the data warns
    return files_digest([p for s in splits for p in (*s.image_paths, *s.mask_paths)],
                        extra=[f"{s.name}={len(s)}" for s in splits])
