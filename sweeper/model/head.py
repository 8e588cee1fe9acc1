"""Segmentation heads on the backbone's patch-token grid, created by name (`head` in a config or a space).

Each takes (B, h, w, C) tokens and returns (B, K, h', w') logits; training upsamples them to the label size
(`sweeper.training.train.logits`), so a head may return logits at the token grid or finer. A new head is one class
here and one line in HEADS; its name is then valid in TrainConfig.head and as a search-space choice.
"""

from __future__ import annotations

from typing import Callable, Iterable

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


class LinearProbeHead(nn.Module):
    """A linear probe: one 1x1 conv, each token's class scores a linear map of that token alone.

    (C + 1) x K parameters: 3,850 on ViT-S/14 tokens. The floor any other head must beat.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(tokens.permute(0, 3, 1, 2))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: depthwise 7x7, LayerNorm over channels, 4x MLP, layer scale, residual."""

    def __init__(self, width: int, expand: int = 4, layer_scale: float = 1e-2) -> None:
        super().__init__()
        self.dw = nn.Conv2d(width, width, kernel_size=7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, expand * width), nn.GELU(), nn.Linear(expand * width, width))
        self.gamma = nn.Parameter(torch.full((width,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1)))  # channels last for LayerNorm and Linear
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class UpStage(nn.Module):
    """x2 bilinear upsampling, 3x3 conv, GroupNorm (batch-size independent: batches are 2 to 8), GELU."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return nn.functional.gelu(self.norm(self.conv(x)))


class ConvNeXtUpHead(nn.Module):
    """The stronger head: what phase 1's head lacks (normalisation, residual blocks, upsampling in steps).

    1x1 projection to 256 channels + LayerNorm, two ConvNeXt blocks on the token grid, two x2 up stages
    (256 -> 128 -> 64), 1x1 classifier: logits at 4x the token grid (76x136 for 266x476 images), which
    training then upsamples to the label size like every head. 1,547,210 parameters on ViT-S/14 tokens,
    fewer than phase 1's head (2,432,778), whose 7x7 stem on 384 channels holds 99% of its weights.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 256, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, kernel_size=1)
        self.stem_norm = nn.LayerNorm(width)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(width) for _ in range(blocks)))
        self.up = nn.Sequential(UpStage(width, width // 2), UpStage(width // 2, width // 4))
        self.classifier = nn.Conv2d(width // 4, num_classes, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.classifier(self.up(self.blocks(x)))


HEADS: dict[str, Callable[..., nn.Module]] = {
    "convnext_phase1": ConvNeXtPhase1Head,  # phase 1's head, the default: trial 0 and `baseline` use it
    "linear": LinearProbeHead,
    "convnext_up": ConvNeXtUpHead,
}


def create_head(name: str, *, in_channels: int, num_classes: int) -> nn.Module:
    """Build a head by its registry name."""
    if name not in HEADS:
        raise SweeperError(f"unknown head '{name}' (known: {', '.join(sorted(HEADS))})")
    return HEADS[name](in_channels, num_classes)


def check_head_names(names: Iterable[str], *, source: str) -> None:
    """Refuse, in one line naming `source`, a head name no class here builds (a space's `head` values are
    checked before a sweep starts: TrainConfig does not know the heads, it imports no torch)."""
    unknown = [n for n in names if n not in HEADS]
    if unknown:
        raise SweeperError(f"{source}: unknown head '{unknown[0]}' (known: {', '.join(HEADS)})")
