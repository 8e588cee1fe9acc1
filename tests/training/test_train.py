import numpy as np
import pytest
import torch

from sweeper.data.tokens import TrainData
from sweeper.errors import SweeperError
from sweeper.training.config import TrainConfig
from sweeper.training.train import TrainingDiverged, batch_order, train

SMALL = dict(image_height=56, image_width=112, device="cpu")


def learnable_data(n_train=16, n_val=4, channels=16, seed=0) -> TrainData:
    """Tokens whose first channels one-hot encode the class of each 14x14 patch: a head can learn it."""
    rng = np.random.default_rng(seed)

    def split(n):
        cls = rng.integers(0, 4, (n, 4, 8))
        tokens = rng.normal(0, 0.1, (n, 4, 8, channels)).astype(np.float32)
        tokens[..., :4] += 3 * np.eye(4, dtype=np.float32)[cls]
        labels = cls.repeat(14, 1).repeat(14, 2).astype(np.uint8)
        return tokens, labels

    (tt, tl), (vt, vl) = split(n_train), split(n_val)
    return TrainData.from_arrays(train_tokens=tt, train_labels=tl, val_tokens=vt, val_labels=vl)


def test_training_learns_a_learnable_task():
    data = learnable_data()
    cfg = TrainConfig(**SMALL, optimizer="adamw", lr=3e-3, epochs=12, batch_size=4)
    result = train(cfg, data)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_acc"] > 0.75 and last["val_iou"] > 2 * first["val_iou"]
    assert result.best["val_iou"] == max(r["val_iou"] for r in result.history)
    assert len(last["val_class_iou"]) == 10 and last["val_class_iou"][5] is None  # class 5 never occurs


def test_same_seed_same_history_other_seed_differs():
    data = learnable_data()
    cfg = TrainConfig(**SMALL, epochs=2, lr=1e-2)
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    a, b = train(cfg, data), train(cfg, data)
    assert strip(a.history) == strip(b.history)
    c = train(cfg.replace(seed=1), data)
    assert strip(c.history) != strip(a.history)


def test_callback_sees_every_epoch_and_train_metrics_can_be_skipped():
    seen = []
    result = train(TrainConfig(**SMALL, epochs=3, train_metrics=False), learnable_data(),
                   on_epoch=lambda rec, run: seen.append((rec["epoch"], rec["train_iou"], run.head.training)))
    assert [s[0] for s in seen] == [1, 2, 3]
    assert all(s[1] is None for s in seen)
    assert len(result.history) == 3 and set(result.head_state) >= {"stem.0.weight", "classifier.bias"}


def test_class_weights_reach_the_loss():
    data = learnable_data()
    plain = train(TrainConfig(**SMALL, epochs=1), data)
    weighted = train(TrainConfig(**SMALL, epochs=1, class_weights="explicit",
                                 explicit_class_weights=(1, 1, 1, 5, 1, 1, 1, 1, 1, 1)), data)
    assert weighted.class_weights[3] == 5.0
    assert weighted.history[0]["train_loss"] != pytest.approx(plain.history[0]["train_loss"])


def test_non_finite_loss_stops_with_a_clear_error():
    data = learnable_data()
    data.train.tokens.array[0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="training loss became nan at epoch 1"):
        train(TrainConfig(**SMALL, epochs=1, batch_size=8), data)


def test_label_size_must_match_config():
    with pytest.raises(Exception, match="config asks for 266x476"):
        train(TrainConfig(device="cpu"), learnable_data())


def test_batch_order_covers_every_item_once():
    batches = batch_order(7, 2, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [2, 2, 2, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    assert [b.tolist() for b in batch_order(3, 2, None)] == [[0, 1], [2]]


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    data = learnable_data()
    cfg = TrainConfig(**SMALL, epochs=4, optimizer="adam", lr=3e-3, schedule="cosine")
    full = train(cfg, data)
    saved = {}
    train(cfg, data, on_epoch=lambda rec, run: saved.setdefault(rec["epoch"], run.state_dict()))
    ckpt_path = tmp_path / "ckpt.pt"
    torch.save(saved[2], ckpt_path)
    resumed = train(cfg, data, resume=torch.load(ckpt_path, weights_only=True))
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert all(torch.equal(resumed.head_state[k], full.head_state[k]) for k in full.head_state)


def test_train_metrics_do_not_change_the_training_run():
    data = learnable_data()
    with_tm = train(TrainConfig(**SMALL, epochs=3, lr=1e-2), data)
    without = train(TrainConfig(**SMALL, epochs=3, lr=1e-2, train_metrics=False), data)
    assert [r["val_iou"] for r in with_tm.history] == [r["val_iou"] for r in without.history]
    assert [r["train_loss"] for r in with_tm.history] == [r["train_loss"] for r in without.history]


@pytest.mark.parametrize("schedule, extra, expected", [
    # 8 images, batches of 4, 2 epochs: optimiser steps 0-3 of 4, peak lr 0.1
    ("constant", {}, [0.1, 0.1, 0.1, 0.1]),
    # cosine over 4 steps: 0.1 * (1 + cos(pi * s / 4)) / 2
    ("cosine", {}, [0.1, 0.08535534, 0.05, 0.01464466]),
    ("cosine", {"min_lr_ratio": 0.1}, [0.1, 0.08681981, 0.055, 0.02318019]),  # floor 0.01 + 0.09 * (...)
    # warm-up over epoch 1 (steps 1/2 and 2/2 of the peak), then cosine over the last 2 steps
    ("warmup", {"warmup_epochs": 1}, [0.05, 0.1, 0.1, 0.05]),
    # a schedule spanning 4 epochs (8 steps) that this 2-epoch run only truncates: 0.1 * (1 + cos(pi * s / 8)) / 2
    ("cosine", {"schedule_epochs": 4}, [0.1, 0.09619398, 0.08535534, 0.06913417]),
])
def test_the_scheduled_lr_reaches_the_optimizer_at_every_step(schedule, extra, expected):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen: list[list[float]] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(
        [g["lr"] for g in opt.param_groups]))
    try:
        result = train(TrainConfig(**SMALL, epochs=2, batch_size=4, lr=0.1, schedule=schedule,
                                   train_metrics=False, **extra), learnable_data(n_train=8))
    finally:
        handle.remove()
    assert len(seen) == 4 and all(len(set(groups)) == 1 for groups in seen)  # every param group alike
    assert [groups[0] for groups in seen] == pytest.approx(expected, abs=1e-8)
    assert [r["lr"] for r in result.history] == pytest.approx([expected[1], expected[3]], abs=1e-8)  # last step's


def test_best_epoch_skips_nan_epochs():
    from sweeper.training.train import TrainResult

    def result(ious):
        return TrainResult(config=TrainConfig(**SMALL), history=tuple({"epoch": e + 1, "val_iou": v}
                                                                      for e, v in enumerate(ious)),
                           head_state={}, class_weights=(), seconds=0.0)

    assert result([float("nan"), 0.3, 0.5, 0.5]).best["epoch"] == 3  # a NaN first epoch is not the best
    assert result([0.2, float("nan"), 0.1]).best["epoch"] == 1
    assert result([float("nan")]).best["epoch"] == 1  # nothing better to offer: the run's only epoch


def test_schedule_epochs_make_a_shorter_run_the_start_of_the_longer_one():
    data = learnable_data(n_train=8)
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    cfg = TrainConfig(**SMALL, epochs=4, batch_size=4, lr=0.05, schedule="warmup", warmup_epochs=1,
                      schedule_epochs=4, train_metrics=False)
    full, short = train(cfg, data), train(cfg.replace(epochs=2), data)
    assert strip(short.history) == strip(full.history)[:2]  # `epochs` only truncates the same schedule
    with pytest.raises(SweeperError, match="schedule_epochs"):
        TrainConfig(schedule_epochs=-1)


def test_train_leaves_torch_threads_and_the_global_rng_alone():
    """`train` changes no process-wide state: the thread count is its caller's, and the head's seeded init
    comes from a forked global generator that is restored afterwards."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    train(TrainConfig(**SMALL, epochs=1, threads=threads + 1), learnable_data())
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)
