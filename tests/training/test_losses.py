import math

import numpy as np
import pytest

from sweeper.errors import SweeperError
from sweeper.training.config import ClassWeighting, Schedule
from sweeper.training.losses import class_weights
from sweeper.training.optim import lr_factor

COUNTS = np.array([10, 30, 60, 0])


def test_none_is_all_ones():
    assert class_weights(COUNTS, scheme=ClassWeighting.NONE).tolist() == [1, 1, 1, 1]


def test_inverse_normalised_to_mean_one_absent_class_gets_rarest_weight():
    w = class_weights(COUNTS, scheme=ClassWeighting.INVERSE)
    raw = np.array([1 / 0.1, 1 / 0.3, 1 / 0.6])
    assert w[:3] == pytest.approx(raw / raw.mean())
    assert w[3] == pytest.approx(w[0])


def test_sqrt_log_and_power_schemes():
    f = np.array([0.1, 0.3, 0.6])
    sq = class_weights(COUNTS, scheme=ClassWeighting.SQRT_INVERSE)[:3]
    assert sq == pytest.approx((1 / np.sqrt(f)) / (1 / np.sqrt(f)).mean())
    lg = class_weights(COUNTS, scheme=ClassWeighting.LOG)[:3]
    assert lg == pytest.approx((1 / np.log(1.02 + f)) / (1 / np.log(1.02 + f)).mean())
    assert class_weights(COUNTS, scheme=ClassWeighting.POWER, power=1.0) == pytest.approx(
        class_weights(COUNTS, scheme=ClassWeighting.INVERSE))
    assert class_weights(COUNTS, scheme=ClassWeighting.POWER, power=0.0)[:3] == pytest.approx([1, 1, 1])


def test_clip_and_explicit():
    w = class_weights(COUNTS, scheme=ClassWeighting.INVERSE, max_weight=1.5)
    assert w.max() == 1.5
    assert class_weights(COUNTS, scheme=ClassWeighting.EXPLICIT, explicit=(1, 2, 3, 4)).tolist() == [1, 2, 3, 4]
    with pytest.raises(SweeperError, match="explicit_class_weights"):
        class_weights(COUNTS, scheme=ClassWeighting.EXPLICIT, explicit=(1, 2))


def test_schedules():
    kw = dict(total_steps=10, warmup_steps=0)
    assert lr_factor(7, schedule=Schedule.CONSTANT, **kw) == 1.0
    assert lr_factor(0, schedule=Schedule.COSINE, **kw) == 1.0
    assert lr_factor(5, schedule=Schedule.COSINE, **kw) == pytest.approx(0.5)
    assert lr_factor(10, schedule=Schedule.COSINE, min_ratio=0.1, **kw) == pytest.approx(0.1)
    warm = [lr_factor(s, total_steps=10, warmup_steps=4, schedule=Schedule.WARMUP) for s in range(10)]
    assert warm[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert warm[4] == 1.0 and warm[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert all(a >= b for a, b in zip(warm[3:], warm[4:]))
