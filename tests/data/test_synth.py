"""Tests for sweeper.data.synth.generate, synth_scene and synth_places: layout and formats, determinism, class shares, safe writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sweeper.data.synth import generate as synth
from sweeper.data.synth import places as synth_places
from sweeper.data.synth import scene as synth_scene
from sweeper.errors import SweeperError

RAW_IDS = [raw for raw, _ in synth_places.RAW_CLASSES]
SMALL = (64, 36)  # width, height: enough pixels for every format check, a few ms per image


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root as relative path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _shares(n: int, *, width: int, height: int, shifted: bool = False, seed: int = 0) -> tuple[np.ndarray, float]:
    """Per-class pixel share (%) in RAW_CLASSES order and mean brightness over n scenes."""
    counts = np.zeros(len(RAW_IDS))
    brightness = 0.0
    for i in range(n):
        rgb, mask = synth_scene.render_scene(np.random.default_rng([seed, 2 if shifted else 0, i]), width=width,
                                       height=height, shifted=shifted)
        counts += [(mask == raw).mean() for raw in RAW_IDS]
        brightness += rgb.mean() / 255
    return counts / n * 100, brightness / n


def test_reference_shares_cover_every_class() -> None:
    assert [name for _, name in synth_places.RAW_CLASSES] == list(synth_places.REFERENCE_TRAIN_SHARES)
    assert sum(synth_places.REFERENCE_TRAIN_SHARES.values()) == pytest.approx(100, abs=0.1)
    assert RAW_IDS == [100, 200, 300, 500, 550, 600, 700, 800, 7100, 10000]


def test_render_scene_types_and_ids() -> None:
    rgb, mask = synth_scene.render_scene(np.random.default_rng(0), width=50, height=30)
    assert rgb.shape == (30, 50, 3) and rgb.dtype == np.uint8
    assert mask.shape == (30, 50) and mask.dtype == np.uint16
    assert set(np.unique(mask)) <= set(RAW_IDS)
    assert mask[0, 0] == 10000 and mask[-1, 25] != 10000  # sky on top, ground below


def test_layout_and_file_formats(tmp_path: Path) -> None:
    out = synth.generate(tmp_path / "ds", train=3, val=2, test=2, seed=1, size=SMALL)
    assert out == tmp_path / "ds"
    assert (out / synth.MARKER).is_file()
    for split, n in [("train", 3), ("val", 2), ("test", 2)]:
        images = sorted(p.name for p in (out / split / "Color_Images").iterdir())
        masks = sorted(p.name for p in (out / split / "Segmentation").iterdir())
        assert images == masks == [f"{i:06d}.png" for i in range(n)]
        for name in images:
            with Image.open(out / split / "Color_Images" / name) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == SMALL
            with Image.open(out / split / "Segmentation" / name) as im:
                assert im.format == "PNG" and im.mode.startswith("I;16") and im.size == SMALL
                mask = np.array(im)
            assert mask.dtype == np.uint16 and mask.shape == (SMALL[1], SMALL[0])
            assert set(np.unique(mask)) <= set(RAW_IDS)  # also: no 0
            assert 10000 in mask and 7100 in mask
    assert not list(tmp_path.glob("ds.*"))  # no temporary folder left behind


def test_same_seed_is_byte_identical_and_seeds_differ(tmp_path: Path) -> None:
    a = _files(synth.generate(tmp_path / "a", train=2, val=1, test=1, seed=5, size=SMALL))
    b = _files(synth.generate(tmp_path / "b", train=2, val=1, test=1, seed=5, size=SMALL))
    c = _files(synth.generate(tmp_path / "c", train=2, val=1, test=1, seed=6, size=SMALL))
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if k.endswith(".png") and a[k] != c[k]]
    assert len(differing) == 8  # every image and every mask


def test_larger_set_extends_smaller(tmp_path: Path) -> None:
    small = _files(synth.generate(tmp_path / "small", train=2, val=1, test=1, size=SMALL))
    large = _files(synth.generate(tmp_path / "large", train=4, val=2, test=3, size=SMALL))
    pngs = [k for k in small if k.endswith(".png")]
    assert len(pngs) == 8
    assert all(small[k] == large[k] for k in pngs)


def test_train_class_shares_match_reference() -> None:
    shares, brightness = _shares(100, width=160, height=90)
    reference = np.array([synth_places.REFERENCE_TRAIN_SHARES[name] for _, name in synth_places.RAW_CLASSES])
    assert np.abs(shares - reference).max() < 3.0, dict(zip(synth_places.REFERENCE_TRAIN_SHARES, shares.round(2)))
    assert shares[RAW_IDS.index(700)] < 0.5  # logs stay rare
    assert shares.min() > 0  # every class shows up
    assert 0.46 < brightness < 0.56


def test_shares_do_not_depend_on_image_size() -> None:
    small, _ = _shares(12, width=160, height=90, seed=3)
    large, _ = _shares(12, width=480, height=270, seed=3)
    assert np.abs(small - large).max() < 0.3


def test_test_split_is_darker_and_rockier() -> None:
    train, train_brightness = _shares(40, width=160, height=90)
    test, test_brightness = _shares(40, width=160, height=90, shifted=True)
    rocks, sky = RAW_IDS.index(800), RAW_IDS.index(10000)
    assert test_brightness < train_brightness - 0.05
    assert 0.38 < test_brightness < 0.46
    assert test[rocks] > 12 and test[rocks] > 5 * train[rocks]
    assert test[sky] < train[sky] - 10
    for absent in (550, 600, 700):  # Ground Clutter, Flowers, Logs
        assert test[RAW_IDS.index(absent)] == 0


def test_default_dataset_is_generated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    render = synth.render_scene

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs["shifted"])
        return render(*args, **kwargs)

    monkeypatch.setattr(synth, "render_scene", counting)
    monkeypatch.setattr(synth, "default_workers", lambda *a, **k: 1)  # render here, where `calls` counts
    first = synth.default_dataset(tmp_path, train=2, val=1, test=1)
    assert calls == [False, False, False, True]  # the test split is the shifted location
    assert first.parent == tmp_path and "s0-2-1-1" in first.name
    with Image.open(first / "train" / "Color_Images" / "000000.png") as im:
        assert im.size == (960, 540)
    before = _files(first)
    second = synth.default_dataset(tmp_path, train=2, val=1, test=1)
    assert second == first and len(calls) == 4 and _files(second) == before


def test_concurrent_generation_keeps_the_first_complete_set(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    nested = []

    def progress(done: int, total: int) -> None:
        if not nested:  # another "process" finishes the same set while this one is still writing
            nested.append(synth.generate(out, train=2, val=1, test=1, size=SMALL))

    assert synth.generate(out, train=2, val=1, test=1, size=SMALL, progress=progress) == out
    assert nested == [out]
    assert len(list((out / "train" / "Color_Images").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # the loser's temporary copy is gone


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SweeperError, match="not empty"):
        synth.generate(out, train=1, val=1, test=1, size=SMALL)
    assert _files(out) == {"notes.txt": b"keep me"}
    (tmp_path / "file").write_text("x")
    with pytest.raises(SweeperError, match="not a folder"):
        synth.generate(tmp_path / "file", train=1, val=1, test=1, size=SMALL)
    with pytest.raises(SweeperError, match="cannot write"):
        synth.generate(tmp_path / "file" / "ds", train=1, val=1, test=1, size=SMALL)


def test_empty_folder_and_previous_set_are_replaced(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    synth.generate(out, train=3, val=1, test=1, size=SMALL)
    synth.generate(out, train=1, val=1, test=0, size=SMALL)
    assert sorted(p.name for p in (out / "train" / "Color_Images").iterdir()) == ["000000.png"]
    assert list((out / "test" / "Color_Images").iterdir()) == []
    assert synth._read_marker(out) == synth._spec(0, {"train": 1, "val": 1, "test": 0}, SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.generate(tmp_path / "ds", train=3, val=1, test=1, size=SMALL, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SweeperError, match="'train'"):
        synth.generate(tmp_path / "ds", train=-1, val=1, test=1)
    with pytest.raises(SweeperError, match="size"):
        synth.generate(tmp_path / "ds", train=1, val=1, test=1, size=(8, 8))


def test_any_number_of_workers_writes_the_same_bytes(tmp_path):
    import hashlib

    def digests(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    seen = []
    one = synth.generate(tmp_path / "one", train=5, val=3, test=2, seed=3, size=(64, 36), workers=1)
    four = synth.generate(tmp_path / "four", train=5, val=3, test=2, seed=3, size=(64, 36), workers=4,
                    progress=lambda done, total: seen.append((done, total)))
    assert len(digests(one)) == 2 * 10 + 1
    assert digests(one) == digests(four)
    assert seen[-1] == (10, 10) and len(seen) == 10


def test_synth_command_takes_workers(tmp_path):
    from sweeper.cli.main import main

    assert main(["-q", "synth", str(tmp_path / "s"), "--train", "2", "--val", "1", "--test", "0",
                 "--size", "32x32", "--workers", "2"]) == 0
    assert len(list((tmp_path / "s" / "train" / "Color_Images").iterdir())) == 2
