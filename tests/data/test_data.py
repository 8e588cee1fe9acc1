import numpy as np
import pytest
from conftest import write_pair
from PIL import Image

from sweeper.data.classes import CLASS_NAMES
from sweeper.data.dataset import (class_frequencies, class_pixel_counts, find_split, load_image, load_labels,
                                  map_classes, resize_labels)
from sweeper.errors import SweeperError
from sweeper.training.config import LabelMode


def test_class_table_folds_flowers_and_unknown_ids_into_class_0():
    raw = np.array([[100, 200, 300, 500, 550], [600, 700, 800, 7100, 10000], [42, 0, 100, 100, 100]])
    classes, unknown = map_classes(raw)
    assert classes.tolist() == [[1, 2, 3, 4, 5], [0, 6, 7, 8, 9], [0, 0, 1, 1, 1]]
    assert unknown == {42: 1}  # 0 and 600 are in the table's domain; 42 is not
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[6] == "Logs"


# Expected values worked out by hand from PIL's bilinear filter (a triangle of support 1 input pixel, scaled
# by the reduction factor when shrinking, weights normalised, the result rounded to the nearest integer),
# then phase 1's ToTensor (/255 in float32), *255, .long(): every id 0-9 survives that round trip unchanged.
#   2x4 -> 2x2 (factor 2, support 2): output x=0 centre 1.0 sees inputs 0,1,2 with weights .75,.75,.25,
#     so [0,0,9,9] -> (0.25*9)/1.75 = 1.29 -> 1; output x=1 centre 3.0 sees inputs 1,2,3 with .25,.75,.75
#     -> 13.5/1.75 = 7.71 -> 8.
#   1x2 -> 1x4 (enlarging, support 1): centres 0.25, 0.75, 1.25, 1.75 give [0,9] -> 0, 2.25, 6.75, 9
#     -> 0, 2, 7, 9.
@pytest.mark.parametrize("classes, size, expected", [
    ([[0, 0, 9, 9], [0, 0, 9, 9]], (2, 2), [[1, 8], [1, 8]]),
    ([[0, 9]], (1, 4), [[0, 2, 7, 9]]),
    ([[3, 7], [3, 7]], (2, 4), [[3, 4, 6, 7], [3, 4, 6, 7]]),  # 3 + (4 * .25, .75) = 4, 6
])
def test_phase1_label_mode_matches_bilinear_values_worked_by_hand(classes, size, expected):
    got = resize_labels(np.array(classes, np.uint8), height=size[0], width=size[1], mode=LabelMode.PHASE1)
    assert got.dtype == np.uint8 and got.tolist() == expected


def test_phase1_label_mode_invents_ids_on_edges_at_the_phase1_size():
    # A sky(9)|trees(1) edge at 960x540 -> 476x266 becomes in-between ids that no pixel had: the phase-1 quirk.
    edge = np.zeros((540, 960), np.uint8)
    edge[:, :480], edge[:, 480:] = 1, 9
    got = resize_labels(edge, height=266, width=476, mode=LabelMode.PHASE1)
    assert got.shape == (266, 476) and (got == got[0]).all()  # every row alike
    row = got[0].tolist()
    assert row[:230] == [1] * 230 and row[-230:] == [9] * 230  # far from the edge: the ids as they were
    invented = [v for v in row if v not in (1, 9)]
    assert invented and all(1 < v < 9 for v in invented) and row == sorted(row)  # a ramp, left to right


def test_nearest_label_mode_keeps_exact_ids():
    edge = np.zeros((540, 960), np.uint8)
    edge[:, :480], edge[:, 480:] = 1, 9
    got = resize_labels(edge, height=266, width=476, mode=LabelMode.NEAREST)
    assert set(np.unique(got).tolist()) == {1, 9}
    assert (got[:, :230] == 1).all() and (got[:, 250:] == 9).all()


def test_load_image_is_imagenet_normalised(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((540, 960, 3), 128, np.uint8)).save(path)
    x = load_image(path, height=266, width=476)
    assert x.shape == (3, 266, 476)
    assert x[0, 0, 0].item() == pytest.approx((128 / 255 - 0.485) / 0.229, abs=1e-6)
    assert x[2, 10, 10].item() == pytest.approx((128 / 255 - 0.406) / 0.225, abs=1e-6)


def test_split_listing_is_sorted_and_pairs_masks(tmp_path):
    for name in ("b.png", "a.png", "c.png"):
        write_pair(tmp_path / "train", name)
    split = find_split(tmp_path, "train")
    assert [p.name for p in split.image_paths] == ["a.png", "b.png", "c.png"]
    assert [p.parent.name for p in split.mask_paths] == ["Segmentation"] * 3


def test_test_folder_layout_is_found_directly(tmp_path):
    write_pair(tmp_path, "x.png")
    assert len(find_split(tmp_path, "test")) == 1


def test_class_counts_and_frequencies():
    labels = np.array([[[0, 1], [1, 9]]], np.uint8)
    counts = class_pixel_counts(labels)
    assert counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert class_frequencies(counts)[1] == 0.5


@pytest.mark.parametrize("case, pattern", [
    ("missing_root", "does not exist"),
    ("no_split", "folder is missing"),
    ("empty", "no .png images"),
    ("no_mask", "has no mask"),
    ("mask_size", "mask is 48x27 but its image is 96x54"),
    ("corrupt", "not a readable PNG"),
    ("unknown_ids", "unknown raw id 42"),
])
def test_bad_inputs_name_the_file(tmp_path, case, pattern):
    root = tmp_path / "data"
    split = root / "train"
    if case != "missing_root":
        write_pair(split, "0000.png")
    target = split / "Color_Images" / "0000.png"
    if case == "no_split":
        root = split / "Segmentation"  # a folder without the layout
        target = root
    elif case == "empty":
        target.unlink()
    elif case == "no_mask":
        (split / "Segmentation" / "0000.png").unlink()
    elif case == "mask_size":
        target = split / "Segmentation" / "0000.png"
        Image.fromarray(np.full((27, 48), 100, np.uint16)).save(target)
    elif case == "corrupt":
        target.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "unknown_ids":
        target = split / "Segmentation" / "0000.png"
        Image.fromarray(np.full((54, 96), 42, np.uint16)).save(target)
    with pytest.raises(SweeperError, match=pattern) as e:
        s = find_split(root, "train")
        for img, mask in zip(s.image_paths, s.mask_paths):
            load_labels(mask, image_path=img, height=28, width=56, mode=LabelMode.PHASE1)
    msg = str(e.value)
    assert "\n" not in msg
    if case not in ("missing_root", "empty", "no_split"):
        assert str(target) in msg or str(target.parent) in msg


def test_unknown_ids_can_be_allowed_as_phase1_did(tmp_path):
    write_pair(tmp_path, "0000.png", raw=np.full((54, 96), 42, np.uint16))
    s = find_split(tmp_path, "test")
    labels = load_labels(s.mask_paths[0], image_path=s.image_paths[0], height=28, width=56,
                         mode=LabelMode.NEAREST, allow_unknown=True)
    assert (labels == 0).all()


def test_a_file_name_that_is_not_utf8_is_hashed_as_its_bytes(tmp_path):
    """Linux file names are bytes: b'\\xff\\xfe.png' is a valid name that has no UTF-8 text."""
    import hashlib
    import os

    from sweeper.data.dataset import files_digest

    odd = tmp_path / os.fsdecode(b"\xff\xfe.png")
    plain = tmp_path / "a.png"
    odd.write_bytes(b"same bytes")
    plain.write_bytes(b"same bytes")
    assert files_digest([odd]) != files_digest([plain])  # the name counts
    assert files_digest([odd]) == hashlib.sha256(b"\xff\xfe.png\0" + b"same bytes").hexdigest()[:16]
    # a UTF-8 name hashes as before (cache keys of existing caches stay valid)
    expect = hashlib.sha256(b"a.png\0" + b"same bytes").hexdigest()[:16]
    assert files_digest([plain]) == expect


@pytest.mark.parametrize("case, pattern", [
    ("dangling image", r"symbolic link to a missing file \(.*gone\.png\)"),
    ("image loop", "loop of symbolic links"),
    ("dangling mask", r"symbolic link to a missing file \(.*gone\.png\)"),
])
def test_a_broken_png_link_is_named_like_an_unreadable_image(tmp_path, case, pattern):
    """A .png that is a link to nowhere (a dangling link, loopA.png <-> loopB.png) is not silently dropped: it is
    one line naming it, as an image that cannot be opened is."""
    import os

    write_pair(tmp_path / "train", "0000.png")
    images, masks = tmp_path / "train" / "Color_Images", tmp_path / "train" / "Segmentation"
    if case == "dangling image":
        target = images / "0001.png"
        os.symlink(tmp_path / "gone.png", target)
    elif case == "image loop":
        target = images / "loopA.png"
        os.symlink(images / "loopB.png", target)
        os.symlink(target, images / "loopB.png")
    else:
        write_pair(tmp_path / "train", "0001.png")
        target = masks / "0001.png"
        target.unlink()
        os.symlink(tmp_path / "gone.png", target)
    with pytest.raises(SweeperError, match=pattern) as e:
        find_split(tmp_path, "train")
    assert str(e.value).startswith(f"{target}:") and "\n" not in str(e.value)


def test_unknown_ids_give_each_pixel_count_once(tmp_path):
    raw = np.full((54, 96), 100, np.uint16)
    raw[:3, :5] = 4242
    write_pair(tmp_path, "0000.png", raw=raw)
    s = find_split(tmp_path, "test")
    with pytest.raises(SweeperError) as e:
        load_labels(s.mask_paths[0], image_path=s.image_paths[0], height=28, width=56, mode=LabelMode.NEAREST)
    assert f"{s.mask_paths[0]}: 15 pixels have unknown raw id 4242; phase 1" in str(e.value)  # not "(15 px)" again
    raw[10, :2] = 99
    write_pair(tmp_path, "0000.png", raw=raw)
    with pytest.raises(SweeperError) as e:
        load_labels(s.mask_paths[0], image_path=s.image_paths[0], height=28, width=56, mode=LabelMode.NEAREST)
    assert "17 pixels have unknown raw ids 99 (2 px), 4242 (15 px); phase 1" in str(e.value)
