"""Per-image costs at 266x476: backbone forward, a phase-1 head step and forward, image loading, a checkpoint.

The backbone is random_vits14 (ViT-S/14 with seeded weights: the same cost as Meta's). Phase 1 runs
batches of 2, so every figure is the median batch time halved.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench_setup import GRID, HEIGHT, WIDTH, Bench
from common import median, repeat

BATCH = 2  # phase 1's batch size


def head_costs(embed_dim: int, repeats: int) -> tuple[dict[str, float], nn.Module, torch.optim.Optimizer]:
    """Median seconds per batch of the phase-1 head: a training step, an eval forward, and their parts;
    also the head and its optimiser (the checkpoint is theirs)."""
    from sweeper.model.head import create_head

    head = create_head("convnext_phase1", in_channels=embed_dim, num_classes=10)
    opt = torch.optim.SGD(head.parameters(), lr=1e-4, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    tokens = torch.randn(BATCH, *GRID, embed_dim)
    labels = torch.randint(0, 10, (BATCH, HEIGHT, WIDTH))

    def up(logits: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)

    def step() -> None:  # what `train` does per batch: head, bilinear upsample, CE, backward, SGD step
        head.train()
        loss = criterion(up(head(tokens)), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward(upsample: bool = True) -> None:  # an eval batch, as `evaluate` does before the metrics
        head.eval()
        with torch.inference_mode():
            out = head(tokens)
            if upsample:
                up(out).argmax(1)

    logits = head(tokens).detach().requires_grad_(True)  # the head's output at token resolution

    def loss_only() -> None:  # the part of a step at label resolution: upsample, CE and their backward
        criterion(up(logits), labels).backward()
        logits.grad = None

    n = repeats * 2
    return ({"step": median(repeat(step, n)), "loss_only": median(repeat(loss_only, n)),
             "head_only": median(repeat(lambda: forward(upsample=False), n)), "forward": median(repeat(forward, n))},
            head, opt)


def checkpoint_cost(head: nn.Module, opt: torch.optim.Optimizer, repeats: int) -> tuple[float, float]:
    """Median seconds and MB of the checkpoint (head + optimiser state) every search epoch ends with."""
    from sweeper.training.train import RunState

    run = RunState(head=head, optimizer=opt, shuffle=torch.Generator(), metrics_shuffle=torch.Generator())
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.pt"
        seconds = median(repeat(lambda: torch.save(run.state_dict(), path), repeats))
        return seconds, path.stat().st_size / 2**20


def per_image_costs(b: Bench) -> dict[str, Any]:
    """Median seconds per image of the backbone, a phase-1 head step, a head forward, image loading."""
    from sweeper.data.dataset import load_image

    torch.manual_seed(0)
    repeats = b.plan.per_image_repeats
    images = torch.randn(BATCH, 3, HEIGHT, WIDTH)
    backbone_s = median(repeat(lambda: b.backbone(images), repeats))
    head, model, opt = head_costs(b.backbone.embed_dim, repeats)
    load_s = median(repeat(lambda: load_image(b.an_image, height=HEIGHT, width=WIDTH), repeats * 2))
    ckpt_s, ckpt_mb = checkpoint_cost(model, opt, repeats)
    return {
        "batch": BATCH, "threads": torch.get_num_threads(), "repeats": repeats,
        "backbone_forward_s": backbone_s / BATCH,
        "head_train_step_s": head["step"] / BATCH,
        "head_forward_s": head["forward"] / BATCH,
        "upsample_ce_fwd_bwd_s": head["loss_only"] / BATCH,  # part of head_train_step_s
        "head_forward_no_upsample_s": head["head_only"] / BATCH,  # part of head_forward_s
        "image_load_s": load_s,  # 960x540 PNG decode + resize + normalise
        "checkpoint_s": ckpt_s, "checkpoint_mb": ckpt_mb,
        "gflop_reference": {"backbone": 35, "head_train_step": 9, "head_forward": 3},  # duality_offroad.md
    }


def describe(c: dict[str, Any]) -> list[str]:
    """The per-image figures in one line."""
    return [f"per image at {HEIGHT}x{WIDTH}, {c['threads']} threads: backbone {c['backbone_forward_s'] * 1e3:.0f} ms, "
            f"head step {c['head_train_step_s'] * 1e3:.0f} ms, head forward {c['head_forward_s'] * 1e3:.0f} ms, "
            f"image load {c['image_load_s'] * 1e3:.0f} ms; upsample+CE in the step "
            f"{c['upsample_ce_fwd_bwd_s'] * 1e3:.0f} ms; checkpoint {c['checkpoint_mb']:.0f} MB in "
            f"{c['checkpoint_s'] * 1e3:.0f} ms"]
