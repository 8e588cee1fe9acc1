"""Shared fixtures: tiny datasets written to tmp folders in the Duality layout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent  # the checkout: tests reach search_spaces/, scripts/ and sweeper/ from here

# tests/ mirrors sweeper/ by stage; a few tests build on another stage's builders (test_train's
# learnable_data, test_report's make_sweep), imported by module name as pytest's rootdir-less mode allows
for _stage in sorted(p for p in Path(__file__).parent.iterdir() if p.is_dir() and p.name != "__pycache__"):
    if str(_stage) not in sys.path:
        sys.path.append(str(_stage))

# Read by Ray at its first import (whichever test module imports it first): local Ray binds 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

RAW_IDS = np.array([100, 200, 300, 500, 550, 600, 700, 800, 7100, 10000], dtype=np.uint16)


def write_pair(folder: Path, name: str, *, size=(96, 54), seed=0, raw=None) -> None:
    """One RGB image and its 16-bit raw-id mask under folder/{Color_Images,Segmentation}."""
    rng = np.random.default_rng(seed)
    (folder / "Color_Images").mkdir(parents=True, exist_ok=True)
    (folder / "Segmentation").mkdir(parents=True, exist_ok=True)
    w, h = size
    if raw is None:
        raw = RAW_IDS[rng.integers(0, len(RAW_IDS), (h // 6 + 1, w // 6 + 1))].repeat(6, 0).repeat(6, 1)[:h, :w]
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(folder / "Color_Images" / name)
    Image.fromarray(raw.astype(np.uint16)).save(folder / "Segmentation" / name)


def make_dataset(root: Path, *, train: int = 3, val: int = 2, size=(96, 54)) -> Path:
    """A tiny dataset root with train/ and val/ splits."""
    for k, (split, n) in enumerate((("train", train), ("val", val))):
        for i in range(n):
            # a fixed seed per image (hash() of a str is randomised per process: data changed every run)
            write_pair(root / split, f"{i:04d}.png", size=size, seed=1000 * k + i)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def fake_cuda(monkeypatch):
    """One 8 GiB GPU of compute capability 8.6, faked with torch's own argument checks (tests/fake_cuda.py)."""
    from fake_cuda import FakeCuda

    return FakeCuda(monkeypatch)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`sweeper ARGV` in this process: its exit code, stdout and stderr."""
    from sweeper.cli.main import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def error_line(err: str) -> str:
    """The one `error:` line of a refused command (and no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
