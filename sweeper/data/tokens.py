"""What the head trains on: each split's labels and patch tokens, and where the tokens come from.

No cache logic here (that is `sweeper.data.cache`, which builds these): a `TrainData` is two `SplitData`,
each labels in memory plus a `TokenSource`, either `ArrayTokens` (the cache's memory map, or a Ray
object-store view in a trial) or `BackboneTokens` (the backbone run in the loop, as phase 1 did).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np
import torch

from sweeper.data.classes import CLASS_NAMES
from sweeper.data.dataset import Split, class_pixel_counts, load_image
from sweeper.errors import SweeperError


class TokenSource(Protocol):
    """Gives the backbone's (B, h, w, C) float32 token grid for some image indices."""

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> torch.Tensor: ...


@dataclass(frozen=True)
class ArrayTokens:
    """Tokens from an in-memory, memory-mapped or shared (Ray object store) array."""

    array: np.ndarray  # (N, h, w, C) float32 or float16

    def __len__(self) -> int:
        return len(self.array)

    def get(self, indices: np.ndarray) -> torch.Tensor:
        """Copy the rows of `indices` (in that order) into a float32 tensor."""
        return torch.from_numpy(np.ascontiguousarray(self.array[indices], dtype=np.float32))


@dataclass(frozen=True)
class BackboneTokens:
    """Tokens computed on demand: load the images and run the backbone, as the phase-1 loop does."""

    split: Split
    backbone: torch.nn.Module
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.split)

    def get(self, indices: np.ndarray) -> torch.Tensor:
        """Load and normalise the images of `indices`, then run the frozen backbone on them."""
        images = torch.stack([load_image(self.split.image_paths[i], height=self.height, width=self.width)
                              for i in indices.tolist()])
        device = next(self.backbone.parameters()).device
        return self.backbone(images.to(device)).float()


@dataclass(frozen=True)
class SplitData:
    """One split as the trainer sees it: labels in memory, tokens from a source."""

    name: str
    labels: np.ndarray  # (N, H, W) uint8 class ids at the training size
    tokens: TokenSource

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.tokens):
            raise ValueError(f"{self.name}: {len(self.labels)} labels but {len(self.tokens)} token rows")


def variant_key(mode: str, flip: bool) -> str:
    """The name of a train-split variant: its label mode, '+flip' for the mirrored images."""
    return f"{mode}+flip" if flip else mode


@dataclass(frozen=True)
class TrainData:
    """What `sweeper.training.train.train` consumes: train and val splits plus class facts.

    `train` and `val` carry the labels of `label_mode`. A run that trains on other labels or on mirrored
    images (phase 3's `train_labels` and `flip_prob`) takes its train split from `variants`, keyed by
    `variant_key` ('nearest', 'phase1+flip', ...): cached beside the plain ones, never made in a trial.
    """

    train: SplitData
    val: SplitData
    embed_dim: int
    class_names: tuple[str, ...] = CLASS_NAMES
    train_counts: np.ndarray | None = None  # class pixel counts of train, when already known (a sweep's driver)
    label_mode: str = "phase1"  # the label mode of `train` and `val`
    variants: Mapping[str, SplitData] = dataclasses.field(default_factory=dict)
    variant_counts: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per label mode

    def train_split(self, mode: str, flip: bool = False) -> SplitData:
        """The train split with the labels of `mode`, of the mirrored images with `flip`."""
        key = variant_key(mode, flip)
        if key == self.label_mode:
            return self.train
        if key not in self.variants:
            have = ", ".join([self.label_mode, *self.variants])
            raise SweeperError(f"train split '{key}' was not prepared (have: {have}); a space that searches "
                               f"train_labels or flip_prob makes the sweep cache them")
        return self.variants[key]

    def pixel_counts(self, mode: str) -> np.ndarray:
        """Class pixel counts of the train labels of `mode` (class weights of a run training on them)."""
        if mode == self.label_mode:
            return self.train_pixel_counts()
        if mode in self.variant_counts:
            return self.variant_counts[mode]
        return class_pixel_counts(self.train_split(mode).labels, self.num_classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train_pixel_counts(self) -> np.ndarray:
        """Pixels of each class in the train labels (class weights are computed from these)."""
        if self.train_counts is not None:
            return self.train_counts
        return class_pixel_counts(self.train.labels, self.num_classes)

    def with_counts(self) -> "TrainData":
        """The same data with the class pixel counts computed now, once, instead of in every run."""
        modes = {k for k in self.variants if not k.endswith("+flip")}
        return dataclasses.replace(self, train_counts=self.train_pixel_counts(),
                                   variant_counts={m: self.pixel_counts(m) for m in sorted(modes)})

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Cached tokens, labels and class counts as named arrays (what a sweep puts into Ray's object
        store once): the plain and the mirrored tokens once each, whatever label sets use them."""
        out = {"train_tokens": np.asarray(self.train.tokens.array), "train_labels": self.train.labels,
               "val_tokens": np.asarray(self.val.tokens.array), "val_labels": self.val.labels,
               "train_counts": np.asarray(self.train_pixel_counts())}
        for key, split in self.variants.items():
            out[f"labels/{key}"] = split.labels
            if key.endswith("+flip"):
                out["train_tokens_flip"] = np.asarray(split.tokens.array)
        out.update({f"counts/{mode}": np.asarray(c) for mode, c in self.variant_counts.items()})
        return out

    @classmethod
    def from_arrays(cls, *, train_tokens: np.ndarray, train_labels: np.ndarray, val_tokens: np.ndarray,
                    val_labels: np.ndarray, train_counts: np.ndarray | None = None,
                    train_tokens_flip: np.ndarray | None = None, label_mode: str = "phase1",
                    **variants: np.ndarray) -> "TrainData":
        """Cached tokens and labels as train data (`to_arrays`' names; no copy of any array)."""
        plain, flipped = ArrayTokens(train_tokens), None if train_tokens_flip is None else ArrayTokens(train_tokens_flip)
        splits, counts = {}, {}
        for name, array in variants.items():
            kind, _, key = name.partition("/")
            if kind == "labels":
                splits[key] = SplitData("train", array, flipped if key.endswith("+flip") else plain)
            elif kind == "counts":
                counts[key] = array
            else:
                raise ValueError(f"unknown train-data array '{name}'")
        return cls(train=SplitData("train", train_labels, plain), val=SplitData("val", val_labels, ArrayTokens(val_tokens)),
                   embed_dim=int(train_tokens.shape[-1]), train_counts=train_counts, label_mode=label_mode,
                   variants=splits, variant_counts=counts)
