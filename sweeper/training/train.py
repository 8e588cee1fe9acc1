"""The one training function: baseline, every search trial and the tests call `train`.

Per epoch it does what the phase-1 script does: a shuffled training pass over the head, a validation-loss
pass, then phase-1 metrics over the whole train split (optional: search trials skip it) and the val split,
all in eval mode with batches of `eval_batch_size`. With cached tokens the validation loss and metrics come
from one forward pass (the same logits, so the same numbers); with the backbone in the loop they are separate
passes, as in phase 1. Every eval pass, and `sweeper.evaluate.predict`, runs the head through `eval_logits`,
the one inference loop. No Ray import here: the search adapter lives in `sweeper.search.trial`. `train`
leaves no process-wide state changed: the caller owning the process sets torch's thread count; the CPU
flush-to-zero it trains under is undone after.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweeper.data.tokens import ArrayTokens, SplitData, TokenSource, TrainData
from sweeper.errors import SweeperError
from sweeper.model.head import create_head
from sweeper.training.config import ClassWeighting, TrainConfig
from sweeper.training.denormals import flush_denormals
from sweeper.training.device import (GpuOutOfMemoryError, autocast, cap_memory, grad_scaler, oom_message,
                                     resolve_device, tokens_fit)
from sweeper.training.losses import config_class_weights
from sweeper.training.metrics import Phase1Meter, confusion_matrix
from sweeper.training.objective import best_index
from sweeper.training.optim import config_lr, make_optimizer

log = logging.getLogger(__name__)

METRICS_SHUFFLE_OFFSET = 7919  # seed offset of the train-metrics shuffle (see RunState)
FLIPS_OFFSET = 104729  # seed offset of the flip draws (flip_prob > 0 only, so other runs draw nothing new)


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
    flips: torch.Generator | None = None  # which training images are drawn mirrored (flip_prob > 0)
    scaler: torch.amp.GradScaler | None = None  # float16 autocast's loss scale (GPUs before compute capability 8.0)

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint: weights, optimiser, generators, step and history (torch.save-able, weights_only).

        Every tensor is a CPU copy, so a checkpoint written on a GPU resumes on a CPU-only machine.
        """
        return {"head": to_cpu(self.head.state_dict()),
                "optimizer": to_cpu(self.optimizer.state_dict()), "shuffle": self.shuffle.get_state(),
                "metrics_shuffle": self.metrics_shuffle.get_state(), "step": self.step,
                "history": [dict(r) for r in self.history],
                **({"flips": self.flips.get_state()} if self.flips is not None else {}),
                **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()` checkpoint (the optimiser moves its state to the head's device)."""
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.shuffle.set_state(state["shuffle"])
        self.metrics_shuffle.set_state(state["metrics_shuffle"])
        self.step = int(state["step"])
        self.history = [dict(r) for r in state["history"]]
        if self.flips is not None and "flips" in state:
            self.flips.set_state(state["flips"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def to_cpu(obj: Any) -> Any:
    """A copy of a (nested) state dict with every tensor detached and on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def load_checkpoint(path) -> dict[str, Any]:
    """A checkpoint file's state, every tensor mapped to the CPU whatever device wrote it."""
    return torch.load(path, map_location="cpu", weights_only=True)


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
        """The epoch record with the highest phase-1 val IoU (the first, on ties; NaN epochs skipped)."""
        i = best_index([r["val_iou"] for r in self.history])
        return self.history[i if i is not None else -1]

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


def batch_order(n: int, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
    """Index batches over n items, shuffled when a generator is given; the last batch may be short."""
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def logits(head: nn.Module, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Head logits upsampled to the label size, as phase 1 does (bilinear, align_corners False)."""
    return F.interpolate(head(tokens), size=size, mode="bilinear", align_corners=False)


class EvalBatches(Protocol):
    """What `eval_logits` runs over: batches of tokens (and labels, when known) on a device."""

    device: torch.device

    def get(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class TokenBatches:
    """A token source's batches copied to a device, without labels (images to predict).

    On a GPU each batch goes through page-locked memory, so the copy runs asynchronously;
    `Batches` copies the tokens it does not stage the same way.
    """

    def __init__(self, tokens: TokenSource, device: torch.device) -> None:
        self.tokens, self.device = tokens, device

    def get(self, idx: np.ndarray) -> tuple[torch.Tensor, None]:
        """Tokens (B, h, w, C) float32 of the items `idx`, on the device (no labels)."""
        x = self.tokens.get(idx)
        if self.device.type == "cuda" and x.device.type == "cpu":  # live backbone tokens are already there
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True), None


class Batches:
    """A split's (tokens, labels) batches on the training device.

    Cached tokens and labels that fit the run's GPU memory budget are copied to
    the GPU once (in their cached dtype) and indexed there; otherwise every
    batch is copied from pinned host memory asynchronously. On the CPU the
    arrays are used where they are.
    """

    def __init__(self, split: SplitData, device: torch.device, budget_bytes: int | None) -> None:
        self.split, self.device = split, device
        self.host_tokens = TokenBatches(split.tokens, device)
        self.tokens_on_device: torch.Tensor | None = None
        self.labels_on_device: torch.Tensor | None = None
        cached = isinstance(split.tokens, ArrayTokens)
        size = (split.tokens.array.nbytes + split.labels.nbytes) if cached else 0
        if device.type == "cuda" and cached and tokens_fit(size, budget_bytes):
            self.tokens_on_device = _upload(split.tokens.array, device)
            self.labels_on_device = _upload(split.labels, device)
        self.pin = device.type == "cuda"

    def get(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, h, w, C) float32 and labels (B, H, W) int64 of the items `idx`, on the device."""
        if self.tokens_on_device is not None:
            i = torch.as_tensor(idx, device=self.device)
            return self.tokens_on_device[i].float(), self.labels_on_device[i].long()
        x, _ = self.host_tokens.get(idx)
        y = torch.from_numpy(self.split.labels[idx])
        if self.pin:  # page-locked: the copy below really runs asynchronously
            y = y.pin_memory()
        return x, y.to(self.device, non_blocking=True).long()


def _upload(array: np.ndarray, device: torch.device, chunk: int = 64) -> torch.Tensor:
    """A (possibly read-only, memory-mapped) array copied to the device in chunks, keeping its dtype."""
    out = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=device)
    for lo in range(0, len(array), chunk):
        out[lo:lo + chunk].copy_(torch.from_numpy(np.array(array[lo:lo + chunk])))
    return out


@torch.inference_mode()
def eval_logits(head: nn.Module, batches: EvalBatches, order: Sequence[np.ndarray], *, size: tuple[int, int],
                amp: bool = False) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
    """The head in eval mode over `order`'s batches: per batch its indices, its float32 logits upsampled
    to `size` and its labels on the device (None for `TokenBatches`).

    The one inference loop: training's eval passes and `sweeper.evaluate.predict` both run it, so a
    prediction made later from a saved head is computed as the one training scored. The head's
    train/eval mode is restored when the loop ends.
    """
    was_training = head.training
    head.eval()
    try:
        for idx in order:
            x, y = batches.get(idx)
            with autocast(batches.device, amp):
                out = logits(head, x, size)
            yield idx, out.float(), y
    finally:
        head.train(was_training)


@torch.inference_mode()
def evaluate(head: nn.Module, batches: Batches, order: Sequence[np.ndarray], *, criterion: nn.Module,
             num_classes: int, amp: bool = False, want_loss: bool = True,
             want_metrics: bool = True) -> tuple[float, Phase1Meter]:
    """One eval-mode pass: mean batch loss and phase-1 metrics (per batch, plus the confusion matrix).

    Losses and confusion matrices stay on the device; the host waits once, at the end.
    """
    size = batches.split.labels.shape[1:]
    loss_sum = torch.zeros((), dtype=torch.float64, device=batches.device)
    meter = Phase1Meter(num_classes)
    for _, out, y in eval_logits(head, batches, order, size=size, amp=amp):
        if want_loss:
            loss_sum += criterion(out, y)
        if want_metrics:
            meter.add(confusion_matrix(out.argmax(1), y, num_classes))
    mean_loss = float(loss_sum / len(order)) if (want_loss and order) else math.nan
    return mean_loss, meter


def train(config: TrainConfig, data: TrainData, *, on_epoch: EpochCallback | None = None,
          resume: dict[str, Any] | None = None) -> TrainResult:
    """Train the head on cached (or live) backbone tokens; call on_epoch after every epoch.

    `resume` is a `RunState.state_dict()` from an earlier call with the same config and data:
    training continues after its last epoch with the same weights, optimiser and shuffles.
    On CUDA the run's allocator is capped at `config.gpu_share` of the GPU (of `config.gpu_memory_gib` of it
    where set; `sweeper.training.device.memory_budget`), and running out
    of it raises `GpuOutOfMemoryError` naming the share. `config.threads` is for the caller that owns
    the process (the CLI, a trial's worker) to apply: `train` leaves torch's thread count alone.
    CUDA's allocator cap and cuDNN's benchmark mode are process-wide (each trial has its own process). CPU threads
    flush subnormals to zero while training (`config.flush_denormals`) and get their own setting back after.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    cap = cap_memory(device, config.gpu_share, limit_bytes=int(config.gpu_memory_gib * 2**30) or None)
    if device.type == "cuda":
        # cuDNN's benchmark tries workspace-hungry kernels: only worth it with the whole GPU to oneself
        torch.backends.cudnn.benchmark = config.gpu_share >= 1
    try:
        with flush_denormals(config.flush_denormals):
            return _train(config, data, device=device, budget=cap, on_epoch=on_epoch, resume=resume, started=started)
    except torch.cuda.OutOfMemoryError:
        raise GpuOutOfMemoryError(oom_message(config.gpu_share, cap, "training")) from None


def _train(config: TrainConfig, data: TrainData, *, device: torch.device, budget: int | None,
           on_epoch: EpochCallback | None, resume: dict[str, Any] | None, started: float) -> TrainResult:
    expected = (len(data.train.labels), config.image_height, config.image_width)
    if data.train.labels.shape != expected or data.val.labels.shape[1:] != expected[1:]:
        raise SweeperError(f"labels are {data.train.labels.shape[1:]} but the config asks for "
                           f"{config.image_height}x{config.image_width}")

    # The head's init comes from the global CPU generator seeded with config.seed, as phase 1 drew it, inside a
    # fork that restores the generator after: no global RNG state leaks out (CUDA's is never touched).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(config.seed)
        head = create_head(config.head, in_channels=data.embed_dim, num_classes=data.num_classes)
    head = head.to(device)
    mode = config.train_label_mode.value  # validation stays on data.val: the labels of config.label_mode
    weights = config_class_weights(config, data.pixel_counts(mode))
    criterion = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device)
                                    if config.class_weights != ClassWeighting.NONE else None)
    run = RunState(head=head, optimizer=make_optimizer(config, head.parameters()),
                   shuffle=torch.Generator().manual_seed(config.seed),
                   metrics_shuffle=torch.Generator().manual_seed(config.seed + METRICS_SHUFFLE_OFFSET),
                   flips=torch.Generator().manual_seed(config.seed + FLIPS_OFFSET) if config.flip_prob > 0 else None,
                   scaler=grad_scaler(device, config.amp))
    if resume is not None:
        run.load_state_dict(resume)
    optimizer, scaler = run.optimizer, run.scaler

    n_train = len(data.train.labels)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    # Cached tokens: the val loss and val metrics come from the same logits, so one pass gives both.
    # Backbone in the loop: keep phase 1's separate passes (and their cost).
    fused_val = isinstance(data.val.tokens, ArrayTokens)
    train_batches = Batches(data.train_split(mode), device, budget)
    left = None if budget is None else budget - _staged_bytes(train_batches)
    flip_batches = Batches(data.train_split(mode, flip=True), device, left) if config.flip_prob > 0 else None
    if flip_batches is not None and left is not None:
        left -= _staged_bytes(flip_batches)
    val_batches = Batches(data.val, device, left)
    val_order = batch_order(len(data.val.labels), config.eval_batch_size, None)
    size = (config.image_height, config.image_width)

    def lr_at(step: int) -> float:
        return config_lr(config, step, steps_per_epoch=steps_per_epoch)

    for epoch in range(len(run.history) + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        head.train()
        # Accumulated on the device, read once per epoch: no host sync per step.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        bad_step = torch.full((), -1, dtype=torch.int64, device=device)  # first step with a non-finite loss
        bad_loss = torch.zeros((), dtype=torch.float32, device=device)
        first_step = run.step
        for idx in batch_order(n_train, config.batch_size, run.shuffle):
            lr = lr_at(run.step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = (train_batches.get(idx) if flip_batches is None
                    else mixed_batch(train_batches, flip_batches, idx, config.flip_prob, run.flips))
            with autocast(device, config.amp):
                out = logits(head, x, size)
            loss = criterion(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                first_bad = (bad_step < 0) & ~torch.isfinite(loss)
                bad_step = torch.where(first_bad, run.step, bad_step)
                bad_loss = torch.where(first_bad, loss.detach(), bad_loss)
                loss_sum += loss.detach()
            run.step += 1
        if int(bad_step) >= 0:
            step = int(bad_step)
            raise TrainingDiverged(f"training loss became {float(bad_loss)} at epoch {epoch}, step {step + 1} "
                                   f"(lr {lr_at(step):.3g}, optimizer {config.optimizer.value}): "
                                   f"lower the learning rate")

        common = dict(criterion=criterion, num_classes=data.num_classes, amp=config.amp)
        val_loss, val_meter = evaluate(head, val_batches, val_order, want_metrics=fused_val, **common)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": float(loss_sum) / (run.step - first_step),
                                  "val_loss": val_loss}
        if config.train_metrics:
            train_order = batch_order(n_train, config.eval_batch_size, run.metrics_shuffle)  # phase 1: shuffled too
            _, train_meter = evaluate(head, train_batches, train_order, want_loss=False, **common)
            record.update(train_meter.summary("train"))
        else:
            record.update({"train_iou": None, "train_dice": None, "train_acc": None, "train_miou": None,
                           "train_class_iou": None})
        if not fused_val:
            _, val_meter = evaluate(head, val_batches, val_order, want_loss=False, **common)
        record.update(val_meter.summary("val"))
        record["lr"] = lr
        record["device"] = str(device)
        record["epoch_seconds"] = time.perf_counter() - epoch_start
        record["elapsed_seconds"] = time.perf_counter() - started
        run.history.append(record)
        log.debug("epoch %d/%d  train loss %.4f  val loss %.4f  val IoU %.4f  val mIoU %.4f  (%.1f s)",
                  epoch, config.epochs, record["train_loss"], val_loss, record["val_iou"], record["val_miou"],
                  record["epoch_seconds"])
        if on_epoch is not None:
            on_epoch(record, run)

    return TrainResult(config=config, history=tuple(run.history), head_state=to_cpu(head.state_dict()),
                       class_weights=tuple(float(w) for w in weights), seconds=time.perf_counter() - started)


def mixed_batch(plain: Batches, flipped: Batches, idx: np.ndarray, flip_prob: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch whose images are each drawn mirrored with `flip_prob` (their cached flipped tokens
    and labels), the others plain; the loss is a mean over pixels, so their order in the batch is free."""
    mirrored = (torch.rand(len(idx), generator=generator) < flip_prob).numpy()
    parts = [b.get(i) for b, i in ((plain, idx[~mirrored]), (flipped, idx[mirrored])) if len(i)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def _staged_bytes(batches: Batches) -> int:
    """GPU bytes a split's staged tokens and labels take (0 when they stayed on the host)."""
    return sum(t.numel() * t.element_size() for t in (batches.tokens_on_device, batches.labels_on_device)
               if t is not None)
