"""The one training function: baseline, every search trial and the tests call `train`.

Per epoch it does what the phase-1 script does: a shuffled training pass
over the head, a validation-loss pass, then phase-1 metrics over the whole
train split (optional: search trials skip it) and the val split, all in eval
mode with batches of `eval_batch_size`. With cached tokens the validation
loss and metrics come from one forward pass (the same logits, so the same
numbers); with the backbone in the loop they are separate passes, as in
phase 1. No Ray import here: the search adapter lives in `sweeper.tune`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweeper.config import ClassWeighting, Optimizer, TrainConfig
from sweeper.errors import SweeperError
from sweeper.features import ArrayTokens, SplitData, TrainData
from sweeper.head import create_head
from sweeper.losses import config_class_weights, lr_factor
from sweeper.metrics import Phase1Meter, confusion_matrix

log = logging.getLogger(__name__)

METRICS_SHUFFLE_OFFSET = 7919  # seed offset of the train-metrics shuffle (see RunState)


@dataclass
class RunState:
    """Everything that a run needs to continue exactly where it stopped (checkpoint/resume).

    Training batches and the phase-1 train-metrics pass are shuffled from two
    generators, so skipping train metrics (search trials) does not change the
    training order: trial 0 of a sweep reproduces `baseline` exactly.
    """

    head: nn.Module
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator
    metrics_shuffle: torch.Generator
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint: weights, optimiser, generators, step and history (torch.save-able, weights_only)."""
        return {"head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "shuffle": self.shuffle.get_state(),
                "metrics_shuffle": self.metrics_shuffle.get_state(), "step": self.step,
                "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()` checkpoint."""
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.shuffle.set_state(state["shuffle"])
        self.metrics_shuffle.set_state(state["metrics_shuffle"])
        self.step = int(state["step"])
        self.history = [dict(r) for r in state["history"]]


EpochCallback = Callable[[dict[str, Any], RunState], None]


class TrainingDiverged(SweeperError):
    """The loss became NaN or infinite: the run cannot continue."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run hands back: per-epoch history, the final head, the best epoch."""

    config: TrainConfig
    history: tuple[dict[str, Any], ...]  # one record per epoch, as passed to on_epoch
    head_state: dict[str, torch.Tensor] = field(repr=False)  # final weights (phase 1 saves the final head)
    class_weights: tuple[float, ...]
    seconds: float

    @property
    def best(self) -> dict[str, Any]:
        """The epoch record with the highest phase-1 val IoU (the first, on ties)."""
        return max(self.history, key=lambda r: (r["val_iou"], -r["epoch"]))

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; an unavailable cuda is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SweeperError(f"device '{name}' was asked for but torch sees no CUDA GPU (use --device cpu or auto)")
    return torch.device(name)


def batch_order(n: int, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
    """Index batches over n items, shuffled when a generator is given; the last batch may be short."""
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW at the config's peak lr."""
    if config.optimizer == Optimizer.SGD:
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == Optimizer.ADAM:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _autocast(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _logits(head: nn.Module, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Head logits upsampled to the label size, as phase 1 does (bilinear, align_corners False)."""
    return F.interpolate(head(tokens), size=size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def evaluate(head: nn.Module, split: SplitData, *, batches: Sequence[np.ndarray], criterion: nn.Module,
             device: torch.device, num_classes: int, amp: bool = False,
             want_loss: bool = True, want_metrics: bool = True) -> tuple[float, Phase1Meter]:
    """One eval-mode pass: mean batch loss and phase-1 metrics (per batch, plus the confusion matrix)."""
    was_training = head.training
    head.eval()
    size = split.labels.shape[1:]
    losses, meter = [], Phase1Meter(num_classes)
    for idx in batches:
        x = split.tokens.get(idx).to(device, non_blocking=True)
        y = torch.from_numpy(split.labels[idx]).to(device, non_blocking=True).long()
        with _autocast(device, amp):
            out = _logits(head, x, size)
        out = out.float()
        if want_loss:
            losses.append(criterion(out, y).item())
        if want_metrics:
            meter.add(confusion_matrix(out.argmax(1), y, num_classes))
    head.train(was_training)
    return (float(np.mean(losses)) if losses else math.nan), meter


def train(config: TrainConfig, data: TrainData, *, on_epoch: EpochCallback | None = None,
          resume: dict[str, Any] | None = None) -> TrainResult:
    """Train the head on cached (or live) backbone tokens; call on_epoch after every epoch.

    `resume` is a `RunState.state_dict()` from an earlier call with the same config and data:
    training continues after its last epoch with the same weights, optimiser and shuffles.
    """
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    expected = (len(data.train.labels), config.image_height, config.image_width)
    if data.train.labels.shape != expected or data.val.labels.shape[1:] != expected[1:]:
        raise SweeperError(f"labels are {data.train.labels.shape[1:]} but the config asks for "
                           f"{config.image_height}x{config.image_width}")

    torch.manual_seed(config.seed)  # head initialisation, as phase 1 drew it from the global RNG
    head = create_head(config.head, in_channels=data.embed_dim, num_classes=data.num_classes).to(device)
    weights = config_class_weights(config, data.train_pixel_counts())
    criterion = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device)
                                    if config.class_weights != ClassWeighting.NONE else None)
    run = RunState(head=head, optimizer=make_optimizer(config, head.parameters()),
                   shuffle=torch.Generator().manual_seed(config.seed),
                   metrics_shuffle=torch.Generator().manual_seed(config.seed + METRICS_SHUFFLE_OFFSET))
    if resume is not None:
        run.load_state_dict(resume)
    optimizer = run.optimizer
    fp16_scaler = torch.amp.GradScaler("cuda") if (config.amp and device.type == "cuda"
                                                   and not torch.cuda.is_bf16_supported()) else None

    n_train = len(data.train.labels)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    # Cached tokens: the val loss and val metrics come from the same logits, so one pass gives both.
    # Backbone in the loop: keep phase 1's separate passes (and their cost).
    fused_val = isinstance(data.val.tokens, ArrayTokens)
    val_batches = batch_order(len(data.val.labels), config.eval_batch_size, None)
    size = (config.image_height, config.image_width)

    for epoch in range(len(run.history) + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        head.train()
        losses = []
        for idx in batch_order(n_train, config.batch_size, run.shuffle):
            lr = config.lr * lr_factor(run.step, total_steps=total_steps, warmup_steps=warmup_steps,
                                       schedule=config.schedule, min_ratio=config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = data.train.tokens.get(idx).to(device, non_blocking=True)
            y = torch.from_numpy(data.train.labels[idx]).to(device, non_blocking=True).long()
            with _autocast(device, config.amp):
                out = _logits(head, x, size)
            loss = criterion(out.float(), y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"training loss became {loss.item()} at epoch {epoch}, step {run.step + 1} "
                                       f"(lr {lr:.3g}, optimizer {config.optimizer.value}): lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            if fp16_scaler is not None:
                fp16_scaler.scale(loss).backward()
                fp16_scaler.step(optimizer)
                fp16_scaler.update()
            else:
                loss.backward()
                optimizer.step()
            losses.append(loss.item())
            run.step += 1

        common = dict(criterion=criterion, device=device, num_classes=data.num_classes, amp=config.amp)
        val_loss, val_meter = evaluate(head, data.val, batches=val_batches, want_metrics=fused_val, **common)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss}
        if config.train_metrics:
            train_batches = batch_order(n_train, config.eval_batch_size, run.metrics_shuffle)  # phase 1: shuffled too
            _, train_meter = evaluate(head, data.train, batches=train_batches, want_loss=False, **common)
            record.update(train_meter.summary("train"))
        else:
            record.update({"train_iou": None, "train_dice": None, "train_acc": None, "train_miou": None,
                           "train_class_iou": None})
        if not fused_val:
            _, val_meter = evaluate(head, data.val, batches=val_batches, want_loss=False, **common)
        record.update(val_meter.summary("val"))
        record["lr"] = lr
        record["epoch_seconds"] = time.perf_counter() - epoch_start
        record["elapsed_seconds"] = time.perf_counter() - started
        run.history.append(record)
        log.debug("epoch %d/%d  train loss %.4f  val loss %.4f  val IoU %.4f  val mIoU %.4f  (%.1f s)",
                 epoch, config.epochs, record["train_loss"], val_loss, record["val_iou"], record["val_miou"],
                 record["epoch_seconds"])
        if on_epoch is not None:
            on_epoch(record, run)

    state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    return TrainResult(config=config, history=tuple(run.history), head_state=state,
                       class_weights=tuple(float(w) for w in weights), seconds=time.perf_counter() - started)
