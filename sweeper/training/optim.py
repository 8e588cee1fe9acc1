"""The optimiser and its learning-rate schedule: what a config's lr fields become during training.

`make_optimizer` builds the optimiser at the peak lr; the trainer sets each step's lr from `config_lr`,
which multiplies the peak by `lr_factor`, a small pure function of the step (constant, cosine, or
linear warmup then cosine), so a schedule is tested without training anything.
"""

from __future__ import annotations

import math

import torch

from sweeper.training.config import Optimizer, Schedule, TrainConfig


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW at the config's peak lr."""
    if config.optimizer == Optimizer.SGD:
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == Optimizer.ADAM:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: Schedule, min_ratio: float = 0.0) -> float:
    """Multiplier on the peak lr at optimiser step `step` (0-based) of `total_steps`."""
    if schedule == Schedule.CONSTANT:
        return 1.0
    start = 0
    if schedule == Schedule.WARMUP and warmup_steps > 0:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        start = warmup_steps
    span = max(total_steps - start, 1)
    progress = min(max(step - start, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def config_lr(config: TrainConfig, step: int, *, steps_per_epoch: int) -> float:
    """The lr of optimiser step `step` (0-based): the schedule spans schedule_epochs (else epochs) of steps."""
    total_steps = steps_per_epoch * (config.schedule_epochs or config.epochs)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    return config.lr * lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=config.schedule,
                                 min_ratio=config.min_lr_ratio)
