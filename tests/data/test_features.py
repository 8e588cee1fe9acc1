import numpy as np
import pytest
from conftest import make_dataset
from PIL import Image

from sweeper.data.cache import cached_tokens, load_train_data
from sweeper.data.dataset import find_split
from sweeper.data.tokens import ArrayTokens, BackboneTokens
from sweeper.model.backbone import create_backbone
from sweeper.training.config import LabelMode, TrainConfig
from sweeper.training.train import train

H, W = 56, 112


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("random_vits14")


def test_cached_and_uncached_training_give_the_same_metrics(tmp_path, backbone):
    root = make_dataset(tmp_path / "data", train=4, val=2)
    kw = dict(height=H, width=W, label_mode=LabelMode.PHASE1, cache_root=tmp_path / "cache", show_progress=False)
    cached = load_train_data(root, backbone, use_cache=True, **kw)
    live = load_train_data(root, backbone, use_cache=False, **kw)
    assert isinstance(cached.train.tokens, ArrayTokens) and isinstance(live.train.tokens, BackboneTokens)
    cfg = TrainConfig(image_height=H, image_width=W, epochs=2, lr=1e-2, optimizer="adam", device="cpu")
    before = backbone.forward_count
    a, b = train(cfg, cached), train(cfg, live)
    # phase 1's loop runs the backbone over train twice and val twice per epoch; the cached run never does
    assert backbone.forward_count - before == 2 * (2 * 4 + 2 * 2)
    for ra, rb in zip(a.history, b.history):
        for key in ("train_loss", "val_loss", "train_iou", "val_iou", "val_dice", "val_acc", "val_miou", "train_dice"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-5), key


def test_cache_is_reused_and_rebuilt_when_a_key_part_changes(tmp_path, backbone):
    root = make_dataset(tmp_path / "data", train=2, val=1)
    split = find_split(root, "train")
    kw = dict(cache_root=tmp_path / "cache", height=H, width=W, show_progress=False)
    first, hit = cached_tokens(split, backbone, **kw)
    assert not hit and first.shape == (2, 4, 8, 384) and first.dtype == np.float32
    n = backbone.forward_count
    again, hit = cached_tokens(split, backbone, **kw)
    assert hit and backbone.forward_count == n and np.array_equal(first, again)
    half, hit = cached_tokens(split, backbone, dtype="float16", **kw)
    assert not hit and half.dtype == np.float16 and np.allclose(half, first, atol=2e-2)
    other_weights, hit = cached_tokens(split, create_backbone("random_vits14", seed=1), **kw)
    assert not hit and not np.allclose(other_weights, first)
    bigger, hit = cached_tokens(split, backbone, cache_root=tmp_path / "cache", height=2 * H, width=W,
                                show_progress=False)
    assert not hit and bigger.shape[1] == 8
    img = split.image_paths[0]
    Image.fromarray(np.zeros((54, 96, 3), np.uint8)).save(img)  # same name, new content
    changed, hit = cached_tokens(find_split(root, "train"), backbone, **kw)
    assert not hit and not np.allclose(changed[0], first[0]) and np.allclose(changed[1], first[1], atol=1e-5)
    assert not list((tmp_path / "cache" / "tokens").glob("*.partial-*"))  # no half-written files left


def test_parallel_decoding_writes_the_same_entries(tmp_path, backbone):
    # the entry built with images decoded by worker processes (ahead of the forward pass) is the one the
    # sequential build writes, byte for byte; and so are the labels
    import hashlib

    from sweeper.data.dataset import load_split_labels

    split = find_split(make_dataset(tmp_path / "d", train=7, val=1, size=(112, 56)), "train")
    entries = {}
    for workers in (0, 2):
        cache = tmp_path / f"cache-{workers}"
        _, hit = cached_tokens(split, backbone, cache_root=cache, height=56, width=112, batch_size=3,
                               show_progress=False, workers=workers)
        assert not hit
        (path,) = (cache / "tokens").glob("*.npy")
        entries[workers] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert entries[0] == entries[2]
    one = load_split_labels(split, height=56, width=112, mode=LabelMode.PHASE1, workers=1)
    three = load_split_labels(split, height=56, width=112, mode=LabelMode.PHASE1, workers=3)
    assert one.shape == (7, 56, 112) and np.array_equal(one, three)


def test_an_unreadable_image_is_one_line_from_a_decoding_worker(tmp_path, backbone):
    from sweeper.errors import SweeperError

    root = make_dataset(tmp_path / "d", train=4, val=1, size=(112, 56))
    bad = root / "train" / "Color_Images" / "0002.png"
    bad.write_bytes(bad.read_bytes()[:60])
    split = find_split(root, "train")
    with pytest.raises(SweeperError) as e:
        cached_tokens(split, backbone, cache_root=tmp_path / "c", height=56, width=112, batch_size=2,
                      show_progress=False, workers=2)
    assert str(e.value).startswith(str(bad)) and "\n" not in str(e.value)
