"""Phase 3's cached dimensions: training labels other than the validation ones, and mirrored images drawn
from a cache entry of their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_dataset

from sweeper.data.cache import cached_tokens, load_train_data
from sweeper.data.dataset import find_split, load_image, load_labels
from sweeper.data.tokens import TrainData
from sweeper.errors import SweeperError
from sweeper.model.backbone import create_backbone
from sweeper.training.config import LabelMode, TrainConfig
from sweeper.training.train import Batches, batch_order, evaluate, train

H, W = 56, 112
SMALL = dict(image_height=H, image_width=W, device="cpu", epochs=2, lr=1e-2, optimizer="adam")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("random_vits14")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("p3") / "data", train=4, val=2)


def strip(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


def test_a_flipped_entry_is_the_backbones_tokens_of_the_mirrored_image_and_is_built_once(tmp_path, backbone, root):
    split = find_split(root, "train")
    kw = dict(cache_root=tmp_path / "cache", height=H, width=W, show_progress=False)
    flipped, cached = cached_tokens(split, backbone, flip=True, **kw)
    assert not cached
    with torch.inference_mode():
        expected = backbone(torch.stack([load_image(p, height=H, width=W, flip=True) for p in split.image_paths]))
    np.testing.assert_allclose(flipped, expected.numpy(), atol=1e-5)
    plain, _ = cached_tokens(split, backbone, **kw)
    # mirroring the token grid is not the same thing (position embeddings, patch contents)
    assert np.abs(np.asarray(plain)[:, :, ::-1] - np.asarray(flipped)).max() > 0.1
    before = backbone.forward_count
    again, cached = cached_tokens(split, backbone, flip=True, **kw)
    assert cached and backbone.forward_count == before and np.array_equal(again, flipped)
    assert len(list((tmp_path / "cache" / "tokens").glob("train-flip-*.npy"))) == 1


def test_train_variants_come_from_the_cache_and_validation_keeps_the_sweeps_labels(tmp_path, backbone, root):
    kw = dict(height=H, width=W, label_mode=LabelMode.PHASE1, cache_root=tmp_path / "cache", show_progress=False)
    data = load_train_data(root, backbone, train_variants=[(LabelMode.NEAREST, False), (LabelMode.NEAREST, True),
                                                         (LabelMode.PHASE1, True)], **kw).with_counts()
    assert set(data.variants) == {"nearest", "nearest+flip", "phase1+flip"}
    split = find_split(root, "train")
    mirrored = np.stack([load_labels(m, image_path=i, height=H, width=W, mode=LabelMode.NEAREST, flip=True)
                         for i, m in zip(split.image_paths, split.mask_paths)])
    assert np.array_equal(data.train_split("nearest", flip=True).labels, mirrored)
    assert data.train_split("nearest").tokens is data.train.tokens  # same tokens, other labels
    assert data.train_split("phase1", flip=True).tokens is data.variants["nearest+flip"].tokens
    # through the object store's names and back, nothing copied
    back = TrainData.from_arrays(**data.to_arrays(), label_mode="phase1")
    assert set(back.variants) == set(data.variants)
    assert np.shares_memory(back.variants["phase1+flip"].tokens.array, data.variants["phase1+flip"].tokens.array)
    assert np.array_equal(back.pixel_counts("nearest"), data.pixel_counts("nearest"))
    with pytest.raises(SweeperError, match="train split 'nearest' was not prepared"):
        load_train_data(root, backbone, **kw).train_split("nearest")


def learnable(n=8, channels=16, seed=0):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, (n, 4, 8))
    tokens = rng.normal(0, 0.1, (n, 4, 8, channels)).astype(np.float32)
    tokens[..., :4] += 3 * np.eye(4, dtype=np.float32)[cls]
    return tokens, cls.repeat(14, 1).repeat(14, 2).astype(np.uint8)


def test_training_on_other_labels_changes_training_only(monkeypatch):
    (tt, tl), (vt, vl) = learnable(8), learnable(4, seed=1)
    other = np.full_like(tl, 7)  # 'nearest' train labels that differ everywhere from the phase-1 ones
    data = TrainData.from_arrays(train_tokens=tt, train_labels=tl, val_tokens=vt, val_labels=vl,
                                 **{"labels/nearest": other})
    same = train(TrainConfig(**SMALL), data)
    assert strip(same.history) == strip(train(TrainConfig(**SMALL, train_labels="phase1"), data).history)
    moved = train(TrainConfig(**SMALL, train_labels="nearest"), data)
    assert moved.history[-1]["train_loss"] != same.history[-1]["train_loss"]
    # its val scores are those of the sweep's own val labels: re-scored here from the final head
    from sweeper.model.head import create_head

    head = create_head("convnext_phase1", in_channels=16, num_classes=10)
    head.load_state_dict(moved.head_state)
    _, meter = evaluate(head, Batches(data.val, torch.device("cpu"), None), batch_order(4, 2, None),
                        criterion=torch.nn.CrossEntropyLoss(), num_classes=10, want_loss=False)
    assert meter.summary("val")["val_iou"] == pytest.approx(moved.history[-1]["val_iou"], abs=1e-7)
    assert np.array_equal(data.val.labels, vl)


def test_flip_probability_draws_from_the_mirrored_split():
    (tt, tl), (vt, vl) = learnable(8), learnable(4, seed=1)
    (ft, fl) = learnable(8, seed=2)  # stand-ins for the mirrored tokens and labels
    data = TrainData.from_arrays(train_tokens=tt, train_labels=tl, val_tokens=vt, val_labels=vl,
                                 train_tokens_flip=ft, **{"labels/phase1+flip": fl})
    only_mirrored = TrainData.from_arrays(train_tokens=ft, train_labels=fl, val_tokens=vt, val_labels=vl)
    plain = train(TrainConfig(**SMALL), data)
    # train metrics off (as in search trials): phase 1's metrics pass scores the plain train split
    assert strip(train(TrainConfig(**SMALL, flip_prob=1.0, train_metrics=False), data).history) == \
        strip(train(TrainConfig(**SMALL, train_metrics=False), only_mirrored).history)
    half = train(TrainConfig(**SMALL, flip_prob=0.5), data)
    assert half.history[-1]["train_loss"] != plain.history[-1]["train_loss"]
    assert strip(half.history) == strip(train(TrainConfig(**SMALL, flip_prob=0.5), data).history)  # seeded
    with pytest.raises(SweeperError, match="flip_prob"):
        TrainConfig(flip_prob=1.5)
    with pytest.raises(SweeperError, match="train split 'phase1\\+flip' was not prepared"):
        train(TrainConfig(**SMALL, flip_prob=0.5), TrainData(train=data.train, val=data.val, embed_dim=16))


def test_the_phase3_space_validates_and_names_the_splits_its_trials_need(tmp_path, capsys):
    from sweeper.search.space import find_space, load_space

    space = load_space(find_space("phase3"))
    assert {"head", "train_labels", "flip_prob"} <= set(space.param_names)
    point = space.baseline_point()  # trial 0 is phase 1: its head, its labels, no flips
    assert (point["head"], point["train_labels"], point["flip_prob"]) == ("convnext_phase1", "same", 0.0)
    assert space.to_config(point) == TrainConfig(**{k: v for k, v in space.fixed.items()}).replace(**point)
    assert space.train_variants("phase1") == [("nearest", False), ("nearest", True), ("phase1", True)]
    assert space.train_variants("nearest") == [("nearest", True)]
    assert load_space(find_space("phase2")).train_variants("phase1") == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(find_space("phase3").read_text().replace("[convnext_phase1, linear, convnext_up]",
                                                            "[convnext_phase1, unet]"))
    from sweeper.cli.main import main

    assert main(["search", "--space", str(bad), "--out", str(tmp_path / "runs"), "--name", "bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: params.head: unknown head 'unet' (known: convnext_phase1, linear, convnext_up)"
    assert not (tmp_path / "runs" / "bad").exists()  # refused before any work


@pytest.mark.slow
def test_a_sweep_trains_other_heads_labels_and_flips_from_the_cache(tmp_path, root):
    import pandas as pd

    from sweeper.cli.main import main

    space = tmp_path / "p3.yaml"
    space.write_text("""
metric: val_iou
mode: max
trials: 3
max_concurrent: 2
asha: {max_epochs: 1, grace_period: 1, reduction_factor: 2}
fixed: {epochs: 1, train_metrics: false, image_height: 56, image_width: 112}
params:
  head:         {type: categorical, choices: [convnext_phase1, linear, convnext_up]}
  train_labels: {type: categorical, choices: [same, nearest]}
  flip_prob:    {type: uniform, low: 0.0, high: 0.9}
""")
    cache = tmp_path / "cache"
    try:
        rc = main(["-q", "search", "--data", str(root), "--space", str(space), "--out", str(tmp_path / "runs"),
                   "--name", "p3", "--cache-dir", str(cache), "--seed", "1", "--backbone", "random_vits14"])
    finally:
        import ray

        ray.shutdown()  # the in-process sweep's local Ray: later test modules start their own
    assert rc == 0
    table = pd.read_csv(tmp_path / "runs" / "p3" / "trials.csv")
    assert list(table.status) == ["TERMINATED"] * 3 and table.best_val_iou.notna().all()
    assert table["head"].iloc[0] == "convnext_phase1" and table.flip_prob.iloc[0] == 0.0
    assert len(set(table["head"])) > 1 or (table.flip_prob > 0).any()  # the sampled trials moved off phase 1
    # the mirrored train tokens were cached once, beside the plain ones
    assert len(list((cache / "tokens").glob("train-flip-*.npy"))) == 1
