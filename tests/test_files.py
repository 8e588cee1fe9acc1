"""Run-folder files: the JSON-lines reader."""

from __future__ import annotations

import pytest

from sweeper.errors import SweeperError
from sweeper.files import read_jsonl


def test_read_jsonl_skips_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "val_iou": 0.25}\n{"epoch": 2, "val_iou": 0.5}\n{"epoch": 3, "val_')  # killed writer
    assert read_jsonl(path) == [{"epoch": 1, "val_iou": 0.25}, {"epoch": 2, "val_iou": 0.5}]
    path.write_text('{"epoch": 1}\n\n{"epoch": 2}\n')  # blank lines are not records
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


def test_read_jsonl_a_corrupt_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "result.json"
    path.write_text('{"epoch": 1}\n{"epoch": 2, oops}\n{"epoch": 3}\n')
    with pytest.raises(SweeperError, match=r"result\.json: line 2: not valid JSON") as e:
        read_jsonl(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_full_disk_under_atomic_path_says_free_some_space_once(tmp_path):
    import errno

    from sweeper.files import atomic_path

    with pytest.raises(SweeperError) as e:
        with atomic_path(tmp_path / "entry.npy", hint="free some space or point --cache-dir at another folder"):
            raise OSError(errno.ENOSPC, "No space left on device")
    msg = str(e.value)
    assert msg.count("free some space") == 1 and "the disk is full" in msg and "--cache-dir" in msg, msg
    with pytest.raises(SweeperError) as e:  # without a hint: the default advice, once
        with atomic_path(tmp_path / "other.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(e.value).count("free some space") == 1, str(e.value)
