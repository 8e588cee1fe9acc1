"""Class-weight schemes for the cross-entropy loss (learning-rate schedules live in `sweeper.training.optim`).

Small pure functions: a scheme maps the train split's class pixel counts to
one weight per class.
"""

from __future__ import annotations

import numpy as np

from sweeper.errors import SweeperError
from sweeper.training.config import ClassWeighting, TrainConfig

LOG_SMOOTHING = 1.02  # ENet's c in 1 / ln(c + f): bounds the weight of a vanishing class near 50


def class_weights(counts: np.ndarray, *, scheme: ClassWeighting, power: float = 1.0, max_weight: float = 0.0,
                  explicit: tuple[float, ...] = ()) -> np.ndarray:
    """One weight per class, normalised to a mean of 1 over the classes present, then clipped at max_weight."""
    counts = np.asarray(counts, dtype=np.float64)
    k = len(counts)
    if scheme == ClassWeighting.NONE:
        return np.ones(k)
    if scheme == ClassWeighting.EXPLICIT:
        if len(explicit) != k:
            raise SweeperError(f"config field 'explicit_class_weights' has {len(explicit)} values, expected {k} (one per class)")
        return np.asarray(explicit, dtype=np.float64)
    present = counts > 0
    if not present.any():
        return np.ones(k)
    freq = counts / counts.sum()
    w = np.zeros(k)
    f = freq[present]
    if scheme == ClassWeighting.INVERSE:
        w[present] = 1.0 / f
    elif scheme == ClassWeighting.SQRT_INVERSE:
        w[present] = 1.0 / np.sqrt(f)
    elif scheme == ClassWeighting.LOG:
        w[present] = 1.0 / np.log(LOG_SMOOTHING + f)
    elif scheme == ClassWeighting.POWER:
        w[present] = f ** -power
    else:  # pragma: no cover - the enum is closed
        raise ValueError(scheme)
    w[present] /= w[present].mean()
    # A class absent from train can still appear in val: give it the rarest present class's weight.
    w[~present] = w[present].max()
    if max_weight > 0:
        w = np.minimum(w, max_weight)
    return w


def config_class_weights(config: TrainConfig, counts: np.ndarray) -> np.ndarray:
    """The class weights a config asks for, given the train split's pixel counts."""
    return class_weights(counts, scheme=config.class_weights, power=config.class_weight_power,
                         max_weight=config.class_weight_max, explicit=config.explicit_class_weights)
