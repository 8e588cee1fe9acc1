"""The package as `pip install .` (not editable) delivers it: the search spaces travel inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_spaces_ship_with_the_package_and_the_default_is_found_from_any_folder(tmp_path):
    pytest.importorskip("setuptools")
    # Build from a copy of what the package is made of (setuptools writes build/ beside its sources; and a
    # copy without the checkout's top-level search_spaces/ link shows the wheel does not need it), offline
    # with the venv's own setuptools (no isolated build env to download).
    src = tmp_path / "src"
    shutil.copytree(ROOT / "sweeper", src / "sweeper", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sweeper-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"sweeper/search_spaces/phase2.yaml", "sweeper/search_spaces/smoke.yaml"} <= names
    # Install it into a bare folder and ask for the default space from an unrelated working folder.
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(site), str(wheel)], capture_output=True, text=True, timeout=240)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import sweeper; from sweeper.space import default_space_path, load_space, find_space; "
             "p = default_space_path(); s = load_space(p); "
             "print(sweeper.__file__, p, s.name, s.trials, find_space('smoke').name, sep='|')")
    env = {**os.environ, "PYTHONPATH": str(site)}
    got = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    module, path, name, trials, smoke = got.stdout.strip().split("|")
    assert module.startswith(str(site)) and path.startswith(str(site))  # the installed copy, not this checkout
    assert name == "phase2" and int(trials) > 1 and smoke == "smoke.yaml"
