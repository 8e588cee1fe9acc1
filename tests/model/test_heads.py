"""The heads registry: every head builds, trains a step, has the parameter count its docstring states, and
is a valid config value; an unknown name is a one-line error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sweeper.errors import SweeperError
from sweeper.model.head import HEADS, create_head
from sweeper.training.config import TrainConfig

C, K = 384, 10  # ViT-S/14 tokens, the dataset's classes

# Written out from the layer shapes (weights + biases), not read from the modules:
PHASE1 = (C * 128 * 49 + 128) + (128 * 49 + 128) + (128 * 128 + 128) + (128 * K + K)  # 7x7, dw 7x7, 1x1, 1x1
LINEAR = C * K + K
BLOCK = (256 * 49 + 256) + 2 * 256 + (256 * 1024 + 1024) + (1024 * 256 + 256) + 256  # dw, LN, MLP, layer scale
UP = (256 * 128 * 9 + 128 + 2 * 128) + (128 * 64 * 9 + 64 + 2 * 64)  # two 3x3 convs with GroupNorm
CONVNEXT_UP = (C * 256 + 256) + 2 * 256 + 2 * BLOCK + UP + (64 * K + K)


@pytest.mark.parametrize("name, params", [("convnext_phase1", PHASE1), ("linear", LINEAR),
                                          ("convnext_up", CONVNEXT_UP)])
def test_each_head_has_its_stated_parameter_count(name, params):
    head = create_head(name, in_channels=C, num_classes=K)
    assert sum(p.numel() for p in head.parameters()) == params
    assert (PHASE1, LINEAR, CONVNEXT_UP) == (2_432_778, 3_850, 1_547_210)  # the figures the docstrings state


@pytest.mark.parametrize("name, scale", [("convnext_phase1", 1), ("linear", 1), ("convnext_up", 4)])
def test_each_head_maps_a_token_grid_to_logits_and_trains_a_step(name, scale):
    torch.manual_seed(0)
    head = create_head(name, in_channels=C, num_classes=K)
    tokens = torch.randn(2, 3, 5, C)
    out = head(tokens)
    assert out.shape == (2, K, 3 * scale, 5 * scale)
    target = torch.randint(0, K, (2, 3 * scale, 5 * scale))
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    before = F.cross_entropy(out, target)
    before.backward()
    opt.step()
    after = F.cross_entropy(head(tokens), target)
    assert torch.isfinite(after) and after.item() < before.item()


def test_an_unknown_head_name_is_one_line():
    assert tuple(HEADS) == ("convnext_phase1", "linear", "convnext_up")
    assert TrainConfig(head="linear").head == "linear"
    with pytest.raises(SweeperError, match="unknown head 'unet'"):
        create_head("unet", in_channels=C, num_classes=K)
