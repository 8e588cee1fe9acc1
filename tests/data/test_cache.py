"""The feature cache against what disks, images and killed processes do: a full disk while writing an entry is
one line (not a Bus error) and leaves no partial file; partial files of dead builds are removed by the next
build; `sweeper cache` lists and prunes; a damaged image is named as such, not blamed on the cache."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, error_line, make_dataset, run_cli

DAY = 86400.0


def partials(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.partial-*"))


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# --------------------------------------------------------------------------- a full disk while writing an entry


class FullDisk:
    """os.posix_fallocate on a full disk: checks its arguments as the real one does (an open file descriptor
    opened for writing, an offset >= 0, a length > 0), then fails with ENOSPC."""

    def __init__(self):
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, fd, offset, length):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (fd, offset, length)):
            raise TypeError("posix_fallocate: integer arguments expected")
        if offset < 0 or length <= 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)  # OSError EBADF for a closed descriptor, as the real one
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        self.calls.append((fd, offset, length))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_the_full_disk_fake_rejects_what_the_real_call_rejects(tmp_path):
    fake = FullDisk()
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        with pytest.raises(OSError) as e:
            fake(f.fileno(), 0, 10)
        assert e.value.errno == errno.EBADF
    with open(path, "r+b") as f:
        for bad in ((f.fileno(), -1, 10), (f.fileno(), 0, 0)):
            with pytest.raises(OSError) as e:
                fake(*bad)
            assert e.value.errno == errno.EINVAL
            with pytest.raises(OSError) as e:
                os.posix_fallocate(*bad)
            assert e.value.errno == errno.EINVAL
        with pytest.raises(TypeError):
            fake(f.fileno(), 0.0, 10)
        with pytest.raises(OSError) as e:
            fake(f.fileno(), 0, 10)
        assert e.value.errno == errno.ENOSPC and fake.calls == [(f.fileno(), 0, 10)]


def test_a_full_disk_while_writing_a_cache_entry_is_one_line_naming_the_folder_and_bytes(tmp_path, capsys,
                                                                                     monkeypatch):
    data = make_dataset(tmp_path / "data", train=2, val=1, size=(56, 28))
    cache = tmp_path / "cache"
    fake = FullDisk()
    monkeypatch.setattr(os, "posix_fallocate", fake)
    code, _, err = run_cli(capsys, "baseline", "--data", data, "--backbone", "random_vits14", "--epochs", "1",
                           "--out", tmp_path / "run", "--cache-dir", cache)
    assert code == 2 and fake.calls, err
    needed = fake.calls[0][2]
    assert needed == 128 + 2 * 266 * 476  # the whole label entry (.npy header + 2 masks at 476x266), reserved
    assert error_line(err) == (f"error: {cache / 'labels'}: cannot write a feature cache entry (No space left on "
                               f"device: {needed:,} bytes needed); free some space or point --cache-dir (or "
                               f"SWEEPER_CACHE) at another folder")
    assert partials(cache) == [] and not list(cache.rglob("*.npy"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """An 8 MiB tmpfs (needs root and mount; skipped elsewhere)."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("needs root and mount")
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if subprocess.run([mount, "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


# The disk fills after the search's check that the cache fits (another job writes there): the real check runs,
# then all but 64 KiB of the tmpfs is taken, then the entries are built.
FILLED_AFTER_THE_CHECK = """
import shutil, sys
from pathlib import Path
import sweeper.data.cache as features
real = features.check_cache_fits
def then_filled(entries, cache_root):
    real(entries, cache_root)
    filler = Path(sys.argv[1]) / "filler"
    with open(filler, "wb") as f:
        f.write(bytes(shutil.disk_usage(filler.parent).free - 64 * 1024))
features.check_cache_fits = then_filled
from sweeper.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_real_full_disk_under_the_cache_is_one_line_not_a_bus_error(tmp_path, small_tmpfs):
    # 64 KiB left: the train labels (2 x 476x266 bytes) do not fit
    data = make_dataset(tmp_path / "data", train=2, val=1, size=(56, 28))
    cache = small_tmpfs / "cache"
    got = subprocess.run([sys.executable, "-c", FILLED_AFTER_THE_CHECK, str(small_tmpfs), "-q", "baseline", "--data",
                          str(data), "--backbone", "random_vits14", "--epochs", "1", "--out", str(tmp_path / "run"),
                          "--cache-dir", str(cache)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert got.returncode == 2, (got.returncode, got.stderr[-2000:])  # was -7 (SIGBUS), 135 from a shell
    line = error_line(got.stderr)
    assert line == (f"error: {cache / 'labels'}: cannot write a feature cache entry (No space left on device: "
                    f"{128 + 2 * 266 * 476:,} bytes needed); free some space or point --cache-dir (or SWEEPER_CACHE) "
                    f"at another folder"), line
    assert partials(small_tmpfs) == []


# --------------------------------------------------------------------------- partial files of killed builds


def label_build(tmp_path: Path, cache: Path):
    """Build one small cache entry (a split's labels) in `cache`; returns its path."""
    from sweeper.data.cache import cached_labels
    from sweeper.data.dataset import find_split
    from sweeper.training.config import LabelMode

    split = find_split(make_dataset(tmp_path / "data", train=2, val=1, size=(56, 28)), "train")
    cached_labels(split, cache_root=cache, height=28, width=56, mode=LabelMode.PHASE1)
    (entry,) = (cache / "labels").glob("*.npy")
    return entry


def partial(folder: Path, name: str, size: int = 1000, age: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"\0" * size)
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def orphans_and_live_ones(cache: Path) -> tuple[list[Path], list[Path]]:
    """Partial files of builds that are gone, and of builds that may still run (kept)."""
    host = socket.gethostname()
    gone = [partial(cache / "tokens", f".train-a.npy.partial-{dead_pid()}", 5000),  # before hosts were named
            partial(cache / "labels", f".val-b.npy.partial-{host}-{dead_pid()}"),
            # a live pid that started after the file was last written: the pid was reused, the build is gone
            partial(cache / "tokens", f".val-c.npy.partial-{host}-{os.getpid()}", age=DAY)]
    kept = [partial(cache / "tokens", f".train-d.npy.partial-{host}-{os.getpid()}"),  # this very process
            partial(cache / "tokens", f".train-e.npy.partial-elsewhere.example-{dead_pid()}")]  # another machine
    return gone, kept


def test_the_next_build_removes_partial_files_whose_build_is_gone(tmp_path, caplog):
    cache = tmp_path / "cache"
    gone, kept = orphans_and_live_ones(cache)
    with caplog.at_level("INFO", logger="sweeper"):
        label_build(tmp_path, cache)
    assert [p for p in gone if p.exists()] == [] and all(p.exists() for p in kept)
    assert f"removed {gone[0]}" in caplog.text


def test_a_build_names_its_partial_file_with_its_host_and_pid(tmp_path, monkeypatch):
    seen = []
    import numpy as np

    real = np.lib.format.open_memmap

    def spy(path, *a, **kw):
        seen.append(Path(path).name)
        return real(path, *a, **kw)

    monkeypatch.setattr(np.lib.format, "open_memmap", spy)
    entry = label_build(tmp_path, tmp_path / "cache")
    assert seen[0] == f".{entry.name}.partial-{socket.gethostname()}-{os.getpid()}"


# --------------------------------------------------------------------------- `sweeper cache`


def test_cache_lists_entries_with_sizes_and_checksum_state(tmp_path, capsys):
    cache = tmp_path / "cache"
    entry = label_build(tmp_path, cache)
    damaged = entry.with_name("train-phase1-damaged.npy")
    shutil.copy(entry, damaged)
    shutil.copy(entry.with_name(entry.name + ".crc32"), damaged.with_name(damaged.name + ".crc32"))
    with open(damaged, "ab") as f:
        f.write(b"x")
    shutil.copy(entry, entry.with_name("train-phase1-old.npy"))  # no checksum recorded
    gone, kept = orphans_and_live_ones(cache)
    code, out, err = run_cli(capsys, "cache", "--cache-dir", cache)
    assert code == 0, err
    lines = out.splitlines()
    size = entry.stat().st_size
    assert lines[0] == f"feature cache {cache}: 3 entries, {3 * size + 1:,} bytes"
    row = next(ln for ln in lines if entry.name in ln)
    assert f"{size:,}" in row and "checksum recorded" in row
    assert "DAMAGED: 1 byte more than recorded" in next(ln for ln in lines if damaged.name in ln)
    assert "no checksum" in next(ln for ln in lines if "train-phase1-old.npy" in ln)
    assert f"{gone[0].name}  5,000 bytes  orphaned (its build is gone)" in out
    assert f"{kept[0].name}  1,000 bytes  being written" in out
    assert "run `sweeper cache --prune` to remove 3 orphaned partial files (7,000 bytes)" in out
    assert all(p.exists() for p in gone)  # listing removes nothing

    code, out, err = run_cli(capsys, "cache", "--cache-dir", cache, "--verify")
    assert code == 0 and "checksum ok" in next(ln for ln in out.splitlines() if entry.name in ln)


def test_cache_prune_removes_orphans_and_entries_unused_for_n_days(tmp_path, capsys):
    cache = tmp_path / "cache"
    entry = label_build(tmp_path, cache)
    old = entry.with_name("val-phase1-old.npy")
    for suffix in ("", ".crc32"):
        shutil.copy(entry.with_name(entry.name + suffix), old.with_name(old.name + suffix))
        os.utime(old.with_name(old.name + suffix), (time.time() - 10 * DAY, time.time() - 10 * DAY))
    gone, kept = orphans_and_live_ones(cache)
    size = old.stat().st_size
    code, out, err = run_cli(capsys, "cache", "--cache-dir", cache, "--prune", "--days", "7")
    assert code == 0, err
    assert [p for p in gone if p.exists()] == [] and all(p.exists() for p in kept)
    assert not old.exists() and not old.with_name(old.name + ".crc32").exists() and entry.exists()
    assert out.strip() == (f"removed 3 orphaned partial files (7,000 bytes) and 1 entry unused for 7 days "
                           f"({size:,} bytes) from {cache}")


def test_a_cache_hit_marks_the_entry_used(tmp_path, capsys):
    cache = tmp_path / "cache"
    entry = label_build(tmp_path, cache)
    check = entry.with_name(entry.name + ".crc32")
    os.utime(check, (time.time() - 10 * DAY, time.time() - 10 * DAY))
    os.utime(entry, (time.time() - 10 * DAY, time.time() - 10 * DAY))
    label_build(tmp_path / "again", cache)  # the same masks: a hit
    code, out, _ = run_cli(capsys, "cache", "--cache-dir", cache, "--prune", "--days", "7")
    assert code == 0 and entry.exists() and "0 entries unused" in out


def test_an_entry_dated_in_the_future_still_ages(tmp_path, capsys):
    """Clock skew, or a cache copied from another machine: an .npy dated a year ahead whose last use (its
    .crc32) was 10 days ago is pruned at 7 days; a .crc32 dated ahead counts as used now, and ages from the
    first prune that sees it."""
    from sweeper.data.cache_folder import last_used

    cache = tmp_path / "cache"
    entry = label_build(tmp_path, cache)
    check = entry.with_name(entry.name + ".crc32")
    ahead, before = time.time() + 365 * DAY, time.time() - 10 * DAY
    os.utime(entry, (ahead, ahead))
    os.utime(check, (before, before))
    assert last_used(entry) == pytest.approx(before, abs=1)
    code, out, _ = run_cli(capsys, "cache", "--cache-dir", cache, "--prune", "--days", "7")
    assert code == 0 and not entry.exists() and "1 entry unused for 7 days" in out  # kept for ever before

    entry = label_build(tmp_path / "again", cache)
    check = entry.with_name(entry.name + ".crc32")
    os.utime(check, (ahead, ahead))
    assert last_used(entry) <= time.time()
    code, out, _ = run_cli(capsys, "cache", "--cache-dir", cache, "--prune", "--days", "7")
    assert code == 0 and entry.exists() and check.stat().st_mtime <= time.time()  # now its recorded use


def test_cache_on_a_folder_that_is_not_there_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "cache", "--cache-dir", tmp_path / "nowhere")
    assert code == 2 and error_line(err) == f"error: {tmp_path / 'nowhere'}: no feature cache here (no such folder)"


# --------------------------------------------------------------------------- a damaged image is not the cache's fault


@pytest.mark.parametrize("labels_cached", [True, False])
def test_a_truncated_training_image_is_named_as_damaged_not_blamed_on_the_cache(tmp_path, capsys, labels_cached):
    from sweeper.data.cache import cached_labels
    from sweeper.data.dataset import find_split
    from sweeper.training.config import LabelMode

    data = make_dataset(tmp_path / "data", train=2, val=1, size=(56, 28))
    cache = tmp_path / "cache"
    if labels_cached:  # an earlier run cached the masks' labels; the image was damaged after (its tokens were not)
        cached_labels(find_split(data, "train"), cache_root=cache, height=266, width=476, mode=LabelMode.PHASE1)
    image = data / "train" / "Color_Images" / "0001.png"
    raw = image.read_bytes()
    image.write_bytes(raw[: len(raw) * 2 // 3])
    code, _, err = run_cli(capsys, "baseline", "--data", data, "--backbone", "random_vits14", "--epochs", "1",
                           "--out", tmp_path / "run", "--cache-dir", cache)
    line = error_line(err)
    assert code == 2 and line.startswith(f"error: {image}: not a readable PNG, the file is damaged ("), line
    assert "cache" not in line and "free some space" not in line and "cannot write" not in line
    assert partials(cache) == []


# --------------------------------------------------------------------------- the full cache's message


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_cache_that_does_not_fit_says_mb_below_a_gb_and_suggests_float16_only_for_float32(small_tmpfs, dtype):
    from sweeper.data.cache import CacheEntry, check_cache_fits
    from sweeper.errors import SweeperError

    entries = [CacheEntry(small_tmpfs / "tokens" / "train.npy", 100 * 10**6, False, dtype),
               CacheEntry(small_tmpfs / "labels" / "train.npy", 10**6, False)]
    with pytest.raises(SweeperError) as e:
        check_cache_fits(entries, small_tmpfs)
    msg = str(e.value)
    free = shutil.disk_usage(small_tmpfs).free
    assert f"needs 101.0 MB more and its disk has {free / 1e6:.1f} MB free" in msg, msg  # was "0.01 GB free"
    assert ("--cache-dtype float16" in msg) == (dtype == "float32"), msg
