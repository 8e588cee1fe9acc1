"""Subnormal floats: counted in a real training step, and the flush that removes them (issue 26).

Many Intel cores handle each operation on a subnormal in microcode (~100x slower), others do not stall at all,
so these tests count the cause (subnormal values) instead of timing it.
"""

import collections
import dataclasses
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sweeper.training.train as train_module
from sweeper.data.tokens import TrainData
from sweeper.training.config import TrainConfig
from sweeper.training.denormals import count_subnormal, flush_denormals, set_team_flush, subnormals, thread_flushes
from sweeper.training.train import train

SMALL = dict(image_height=56, image_width=112, device="cpu")
BIG = 1 << 22  # elements: far above ATen's grain size, so an elementwise op runs on every thread of the team


def confident_data(scale: float = 20.0, n_train: int = 8, n_val: int = 2) -> TrainData:
    """One-hot class tokens at 20x the usual scale: the stem's pre-activations pass |x| ~ 13 from the first step,
    where GELU's backward (x's normal density) underflows into subnormals, as a confident AdamW head's do
    after a few epochs on the embedded set (found with the hooks below: the GELUs' input gradients)."""
    rng = np.random.default_rng(0)

    def split(n):
        cls = rng.integers(0, 4, (n, 4, 8))
        tokens = rng.normal(0, 0.1, (n, 4, 8, 16)).astype(np.float32)
        tokens[..., :4] += 3 * np.eye(4, dtype=np.float32)[cls]
        return scale * tokens, cls.repeat(14, 1).repeat(14, 2).astype(np.uint8)

    (tt, tl), (vt, vl) = split(n_train), split(n_val)
    return TrainData.from_arrays(train_tokens=tt, train_labels=tl, val_tokens=vt, val_labels=vl)


CONFIDENT = TrainConfig(**SMALL, optimizer="adamw", lr=3e-3, epochs=2, batch_size=2, train_metrics=False)


def team_subnormal_fraction() -> float:
    """Share of a big elementwise product of subnormals that stays subnormal: 0 where the calling thread and
    every thread of its OpenMP team flush, 1 where none does, between where only some do."""
    return count_subnormal(subnormals(BIG) * 1.0) / BIG


@pytest.fixture
def no_flush():
    """The calling thread and its team without flush-to-zero (torch's default), whatever earlier tests left."""
    set_team_flush(False)
    assert team_subnormal_fraction() == 1.0 and not thread_flushes()
    yield
    set_team_flush(False)


def test_count_subnormal_reads_the_bits():
    t = torch.tensor([0.0, 1e-39, -1e-39, 1.2e-38, 1.0, float("inf"), float("nan"), -0.0])
    assert count_subnormal(t) == 2  # 1e-39 and -1e-39; 1.2e-38 is just above the smallest normal
    assert count_subnormal(t.double()) == 0 and count_subnormal(torch.tensor([1e-310], dtype=torch.float64)) == 1
    assert count_subnormal(torch.tensor([1e-6, 1e-3], dtype=torch.float16)) == 1  # fp16's smallest normal: 6.1e-5
    assert count_subnormal(torch.arange(3)) == 0
    with flush_denormals():  # a value comparison would read them as 0 under DAZ; the bits do not change
        assert count_subnormal(t) == 2


def test_the_flush_reaches_every_thread_of_the_team_and_is_restored(no_flush):
    assert torch.get_num_threads() >= 2 or pytest.skip("one intra-op thread: no team to reach")
    torch.set_flush_denormal(True)  # the calling thread alone, as torch.set_flush_denormal does
    assert 0 < team_subnormal_fraction() < 1, "the team's other threads keep their own setting"
    with flush_denormals():
        assert team_subnormal_fraction() == 0.0 and thread_flushes()
    assert 0 < team_subnormal_fraction() < 1 and thread_flushes(), "each thread got its own setting back"
    torch.set_flush_denormal(False)


def test_the_flush_in_another_thread(no_flush):
    seen = {}

    def body():
        with flush_denormals():
            seen["inside"] = team_subnormal_fraction()
        seen["after"] = team_subnormal_fraction()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"inside": 0.0, "after": 1.0}  # a Ray trial trains in a thread of its own
    assert team_subnormal_fraction() == 1.0


def count_in_training(monkeypatch, config: TrainConfig, data: TrainData) -> collections.Counter:
    """Subnormals seen in each epoch's steps: module outputs, the gradients into every module, the upsampled
    logits' gradient (the loss terms), and at each epoch's end the gradients and AdamW state."""
    counts: collections.Counter = collections.Counter()
    make_head = train_module.create_head

    def hooked(*args, **kwargs):
        head = make_head(*args, **kwargs)
        for name, m in head.named_modules():
            if list(m.children()):
                continue
            m.register_forward_hook(lambda mod, i, o, n=name: counts.update({f"output {n}": count_subnormal(o)}))
            m.register_full_backward_hook(lambda mod, gi, go, n=name: counts.update(
                {f"grad into {n}": sum(count_subnormal(g) for g in gi if g is not None)}))
        return head

    def logits(head, tokens, size):
        out = F.interpolate(head(tokens), size=size, mode="bilinear", align_corners=False)
        if out.requires_grad:
            out.register_hook(lambda g: counts.update({"loss gradient": count_subnormal(g)}))
        return out

    def on_epoch(record, run):
        for p in run.head.parameters():
            counts.update({"parameter gradients": count_subnormal(p.grad) if p.grad is not None else 0,
                           "parameters": count_subnormal(p)})
        for state in run.optimizer.state.values():
            counts.update({"optimizer state": sum(count_subnormal(v) for v in state.values()
                                                  if isinstance(v, torch.Tensor))})

    monkeypatch.setattr(train_module, "create_head", hooked)
    monkeypatch.setattr(train_module, "logits", logits)
    train(config, data, on_epoch=on_epoch)
    return counts


def test_a_confident_head_makes_subnormals_without_the_flush(monkeypatch, no_flush):
    """The test below is not vacuous: the same training with the flush switched off makes subnormals."""
    off = dataclasses.replace(CONFIDENT, flush_denormals=False)
    counts = count_in_training(monkeypatch, off, confident_data())
    assert counts["grad into stem.1"] > 0  # GELU's backward
    assert team_subnormal_fraction() == 1.0


def test_train_leaves_no_subnormal_in_a_training_step(monkeypatch, no_flush):
    counts = count_in_training(monkeypatch, CONFIDENT, confident_data())
    assert counts["grad into stem.1"] == 0  # GELU's backward: where they arise without the flush
    assert {k: v for k, v in counts.items() if v} == {}
    assert len(counts) > 10  # every hook ran


def test_train_restores_the_flush_setting(no_flush):
    data = confident_data()
    train(CONFIDENT, data)
    assert team_subnormal_fraction() == 1.0 and not thread_flushes()
    with flush_denormals():
        train(CONFIDENT, data)
        assert team_subnormal_fraction() == 0.0, "a caller that flushed still flushes after train"
