"""Segmentation heads on the backbone's patch-token grid, created by name."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sweeper.errors import SweeperError


class ConvNeXtPhase1Head(nn.Module):
    """The phase-1 'ConvNeXt-style' head: 7x7 conv, depthwise 7x7, two 1x1 convs; no norm, no residual.

    Module names match the organisers' script, so its `segmentation_head.pth` loads here.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 128) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, kernel_size=7, padding=3), nn.GELU())
        self.block = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=7, padding=3, groups=width), nn.GELU(),
            nn.Conv2d(width, width, kernel_size=1), nn.GELU(),
        )
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) token grid -> (B, num_classes, h, w) logits."""
        x = tokens.permute(0, 3, 1, 2)
        return self.classifier(self.block(self.stem(x)))


HEADS: dict[str, Callable[..., nn.Module]] = {
    "convnext_phase1": ConvNeXtPhase1Head,
}


def create_head(name: str, *, in_channels: int, num_classes: int) -> nn.Module:
    """Build a head by its registry name."""
    if name not in HEADS:
        raise SweeperError(f"unknown head '{name}' (known: {', '.join(sorted(HEADS))})")
    return HEADS[name](in_channels, num_classes)
