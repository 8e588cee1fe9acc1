"""The package as `pip install .` (not editable) delivers it: the search spaces travel inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` would install, built once for this module."""
    pytest.importorskip("setuptools")
    tmp_path = tmp_path_factory.mktemp("wheel")
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
    (found,) = (tmp_path / "dist").glob("sweeper-*.whl")
    return found


def test_every_module_and_subpackage_of_sweeper_is_in_the_wheel(wheel):
    # packages = ["sweeper"] shipped sweeper/ without sweeper/report/: `baseline` trained, then died on its report
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "sweeper"
    sources = {p.relative_to(ROOT).as_posix() for p in package.rglob("*")
               if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
    subpackages = {p.parent.relative_to(ROOT).as_posix() for p in package.rglob("__init__.py")}
    assert "sweeper/report" in subpackages  # the one that was missing: the check looks where it must
    assert sorted(sources - names) == []


def test_spaces_ship_with_the_package_and_the_default_is_found_from_any_folder(wheel, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"sweeper/search_spaces/phase2.yaml", "sweeper/search_spaces/smoke.yaml"} <= names
    # Install it into a bare folder and ask for the default space from an unrelated working folder.
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(site), str(wheel)], capture_output=True, text=True, timeout=240)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import sweeper; from sweeper.search.space import default_space_path, load_space, find_space; "
             "p = default_space_path(); s = load_space(p); "
             "print(sweeper.__file__, p, s.name, s.trials, find_space('smoke').name, sep='|')")
    env = {**os.environ, "PYTHONPATH": str(site)}
    got = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    module, path, name, trials, smoke = got.stdout.strip().split("|")
    assert module.startswith(str(site)) and path.startswith(str(site))  # the installed copy, not this checkout
    assert name == "phase2" and int(trials) > 1 and smoke == "smoke.yaml"


def installed_venv(wheel: Path, folder: Path) -> Path:
    """A fresh venv holding `wheel` installed as `pip install .` installs it (not editable), its dependencies
    (torch, Ray...) seen from this test venv; returns the venv's bin folder."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    # pip of this venv installs into that one; before the path below exists, so that this venv's editable
    # sweeper is not seen as "already installed"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=240)
    assert install.returncode == 0, install.stderr[-2000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # This venv's packages, after the new venv's own (so its sweeper wins); a plain path line, so this venv's
    # .pth files (the editable install's finder) are not run there.
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(site, "test-venv-packages.pth").write_text("".join(f"{p}\n" for p in ours))
    return folder / "bin"


@pytest.mark.slow
def test_the_wheel_installed_not_editable_runs_every_command(wheel, tmp_path):
    bin_dir = installed_venv(wheel, tmp_path / "venv")
    work = tmp_path / "elsewhere"  # not this checkout: nothing of it on the path
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SWEEPER_CACHE"] = str(tmp_path / "cache")

    def sweeper(*args: str) -> str:
        got = subprocess.run([str(bin_dir / "sweeper"), "-q", *args], cwd=work, env=env, capture_output=True,
                             text=True, timeout=400)
        assert got.returncode == 0 and "Traceback" not in got.stderr, (args, got.stderr[-3000:])
        return got.stdout

    where = subprocess.run([str(bin_dir / "python"), "-c", "import sweeper.report, sweeper; print(sweeper.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.startswith(str(tmp_path / "venv"))  # the installed copy, not this checkout

    sweeper("synth", "data", "--train", "2", "--val", "1", "--test", "1", "--size", "224x126")
    sweeper("baseline", "--data", "data", "--epochs", "1", "--out", "base")
    assert (work / "base" / "report" / "index.html").is_file()
    sweeper("search", "--data", "data", "--space", "smoke", "--trials", "2", "--max-concurrent", "1", "--name", "sw")
    run = work / "results" / "sw"
    assert len((run / "trials.csv").read_text().splitlines()) == 3  # header + 2 trials
    assert sweeper("report", str(run)).strip() == f"report: {run / 'report' / 'index.html'}"
    assert "outputs in" in sweeper("evaluate", str(run), "--samples", "1")
    assert "exported head" in sweeper("export", str(run), "--out", "exported")
    assert (work / "exported" / "segmentation_head.pth").is_file()
