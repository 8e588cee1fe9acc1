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
