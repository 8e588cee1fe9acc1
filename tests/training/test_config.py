import pytest

from sweeper.errors import SweeperError
from sweeper.training.config import ClassWeighting, Optimizer, TrainConfig


def test_defaults_are_phase1():
    c = TrainConfig()
    assert (c.optimizer, c.lr, c.momentum, c.epochs, c.batch_size) == (Optimizer.SGD, 1e-4, 0.9, 10, 2)
    assert (c.image_height, c.image_width, c.eval_batch_size) == (266, 476, 2)
    assert c.class_weights == ClassWeighting.NONE and c.schedule.value == "constant" and c.weight_decay == 0


def test_from_dict_coerces_strings_and_round_trips():
    c = TrainConfig.from_dict({"optimizer": "AdamW", "lr": "3e-4", "epochs": 20.0, "amp": "true"})
    assert c.optimizer == Optimizer.ADAMW and c.lr == pytest.approx(3e-4) and c.epochs == 20 and c.amp is True
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("values, field", [
    ({"learning_rate": 1}, "learning_rate"),
    ({"lr": 0}, "lr"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"epochs": 2.5}, "epochs"),
    ({"batch_size": True}, "batch_size"),
    ({"image_height": 100}, "image_height"),
    ({"momentum": 1.0}, "momentum"),
    ({"class_weights": "explicit"}, "explicit_class_weights"),
    ({"explicit_class_weights": [1, 2]}, "explicit_class_weights"),
    ({"device": "tpu"}, "device"),
])
def test_invalid_values_name_the_field(values, field):
    with pytest.raises(SweeperError, match=field) as e:
        TrainConfig.from_dict(values)
    assert "\n" not in str(e.value)


def test_frozen():
    with pytest.raises(Exception):
        TrainConfig().lr = 1.0  # type: ignore[misc]
