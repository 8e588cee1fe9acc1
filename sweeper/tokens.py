"""What the head trains on: each split's labels and patch tokens, and where the tokens come from.

No cache logic here (that is `sweeper.features`, which builds these): a `TrainData` is two `SplitData`,
each labels in memory plus a `TokenSource`, either `ArrayTokens` (the cache's memory map, or a Ray
object-store view in a trial) or `BackboneTokens` (the backbone run in the loop, as phase 1 did).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from sweeper.data import CLASS_NAMES, Split, class_pixel_counts, load_image


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


@dataclass(frozen=True)
class TrainData:
    """What `sweeper.train.train` consumes: train and val splits plus class facts."""

    train: SplitData
    val: SplitData
    embed_dim: int
    class_names: tuple[str, ...] = CLASS_NAMES
    train_counts: np.ndarray | None = None  # class pixel counts of train, when already known (a sweep's driver)

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
        return dataclasses.replace(self, train_counts=self.train_pixel_counts())

    @classmethod
    def from_arrays(cls, *, train_tokens: np.ndarray, train_labels: np.ndarray, val_tokens: np.ndarray,
                    val_labels: np.ndarray, train_counts: np.ndarray | None = None) -> "TrainData":
        """Cached tokens and labels as train data."""
        return cls(train=SplitData("train", train_labels, ArrayTokens(train_tokens)),
                   val=SplitData("val", val_labels, ArrayTokens(val_tokens)),
                   embed_dim=int(train_tokens.shape[-1]), train_counts=train_counts)
