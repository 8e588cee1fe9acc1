"""The feature cache's folder as files: its entries, the state of their checksums, when each was last used, and
the partial files that builds leave while they write; `sweeper cache` (`sweeper.cli.cache`) lists them and
`--prune` removes what is dead. No torch or numpy here (`sweeper.data.cache` builds the entries and calls
`remove_orphaned_partials`).

A build writes an entry at `.NAME.partial-HOST-PID` (`partial_tag`) and renames it when complete. A build that
was killed (`kill -9`, a reboot) leaves that file behind, possibly gigabytes; it is an orphan once no process
PID runs on HOST, or the process PID there started after the file was last written (the pid was reused).
Partial files of other machines (a cache folder shared over the network) are left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

ENTRY_FOLDERS = ("tokens", "labels")  # under the cache root: one .npy per entry, its .crc32 and maybe a .json
PARTIAL = re.compile(r"\.(?P<entry>.+)\.partial-(?:(?P<host>.+)-)?(?P<pid>\d+)")  # no host: written before hosts
DAY_SECONDS = 86400
CHECKSUM_CHUNK = 64 << 20  # bytes read at a time when checksumming an entry (memory stays flat at any size)
PRUNE_DAYS = 30  # `sweeper cache --prune` without --days: entries unused for a month go


def partial_tag() -> str:
    """The tag of this process's partial files (`files.atomic_path` adds the pid): names its machine."""
    return f"partial-{socket.gethostname()}"


def checksum_path(entry: Path) -> Path:
    """The entry's recorded checksum: {"crc32": int, "bytes": int} of the .npy as written."""
    return entry.with_name(entry.name + ".crc32")


def mark_used(entry: Path) -> None:
    """Record that an entry was just used (its checksum file's time; `--prune --days` reads it). A read-only
    cache folder is fine: the entry then keeps its last recorded use."""
    with contextlib.suppress(OSError):
        os.utime(checksum_path(entry))


def last_used(entry: Path) -> float:
    """When an entry was last used (seconds since the epoch), kept in one place: its checksum file's time (written
    with the entry, set by each use), else the .npy's. A time in the future (clock skew, a cache copied from
    another machine) counts as now: a date ahead must not keep an entry for ever."""
    with contextlib.suppress(OSError):
        return min(_use_record(entry).stat().st_mtime, time.time())
    return 0.0


def _use_record(entry: Path) -> Path:
    """The file whose time is the entry's last use: its checksum file, else (an entry without one) the .npy."""
    check = checksum_path(entry)
    return check if check.exists() else entry


def _record_now_if_ahead(entry: Path) -> None:
    """A last use recorded in the future is set to now (`last_used` counts it as now), so the entry ages."""
    with contextlib.suppress(OSError):
        record = _use_record(entry)
        if record.stat().st_mtime > time.time():
            os.utime(record)


def process_start(pid: int) -> float | None:
    """When process `pid` of this machine started (seconds since the epoch, psutil's create_time); None when no
    such process runs; 0.0 when it runs but its start cannot be read (another user's, on some systems)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError, OverflowError):  # gone, or not a pid at all
        return None
    except psutil.AccessDenied:
        return 0.0


def default_cache_root() -> Path:
    """$SWEEPER_CACHE, else $XDG_CACHE_HOME/sweeper, else ~/.cache/sweeper."""
    if os.environ.get("SWEEPER_CACHE"):
        return Path(os.environ["SWEEPER_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sweeper"


def file_crc32(path: Path) -> int:
    """CRC-32 of a file's bytes, read in 64 MiB chunks (about 1 s per GB here; see docs/reliability.md)."""
    crc, buf = 0, bytearray(CHECKSUM_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return crc


def other_host(path: Path) -> str | None:
    """The machine that writes a partial file, when it is not this one."""
    m = PARTIAL.fullmatch(path.name)
    host = m.group("host") if m else None
    return host if host not in (None, socket.gethostname()) else None


def is_orphan(path: Path) -> bool:
    """Whether a partial file's build is gone (see the module's docstring); False for other machines' files."""
    m = PARTIAL.fullmatch(path.name)
    if m is None or other_host(path):
        return False
    started = process_start(int(m.group("pid")))
    try:
        written = path.stat().st_mtime
    except OSError:
        return False  # gone already (renamed by its build, or removed by another process)
    # 1 s of slack: the start time is known to the clock tick, the boot time to the second
    return started is None or started > written + 1.0


def partial_files(root: Path) -> list[Path]:
    """Every partial file under the cache root's entry folders."""
    return sorted(p for folder in ENTRY_FOLDERS for p in (Path(root) / folder).glob(".*.partial-*"))


def remove_orphaned_partials(root: Path) -> tuple[int, int]:
    """Remove the partial files of builds that are gone; returns (files, bytes) removed."""
    count = size = 0
    for path in partial_files(root):
        if not is_orphan(path):
            continue
        with contextlib.suppress(OSError):
            n = path.stat().st_size
            path.unlink()
            count, size = count + 1, size + n
            log.info("feature cache: removed %s (%s bytes), left by a build that is gone", path, f"{n:,}")
    return count, size


@dataclass(frozen=True)
class Entry:
    """One cache entry as `sweeper cache` lists it."""

    path: Path
    bytes: int
    state: str  # the checksum's state: recorded, ok, DAMAGED: ..., no checksum
    used: float  # last written or used, seconds since the epoch


def checksum_state(entry: Path, *, verify: bool) -> str:
    """'checksum recorded' (size as recorded), 'checksum ok' (verified: reads every byte), 'no checksum', or
    'DAMAGED: why' (the next run rebuilds it)."""
    try:
        recorded = json.loads(checksum_path(entry).read_text())
        recorded_bytes, recorded_crc = int(recorded["bytes"]), int(recorded["crc32"])
    except (OSError, ValueError, TypeError, KeyError):
        return "no checksum (written by an older version or interrupted): rebuilt when next used"
    diff = entry.stat().st_size - recorded_bytes
    if diff:
        return f"DAMAGED: {abs(diff):,} byte{'s' if abs(diff) != 1 else ''} {'more' if diff > 0 else 'fewer'} " \
               f"than recorded: rebuilt when next used"
    if not verify:
        return "checksum recorded"
    return "checksum ok" if file_crc32(entry) == recorded_crc else "DAMAGED: checksum differs: rebuilt when next used"


def entries(root: Path, *, verify: bool = False) -> list[Entry]:
    """The cache's complete entries, oldest use first."""
    found = [Entry(p, p.stat().st_size, checksum_state(p, verify=verify), last_used(p))
             for folder in ENTRY_FOLDERS for p in sorted((Path(root) / folder).glob("[!.]*.npy"))]
    return sorted(found, key=lambda e: e.used)


def prune(root: Path, *, days: float) -> str:
    """Remove orphaned partial files and entries unused for `days` days; the line saying what went."""
    files, partial_bytes = remove_orphaned_partials(root)
    cutoff = time.time() - days * DAY_SECONDS
    gone = gone_bytes = 0
    for e in entries(root):
        _record_now_if_ahead(e.path)
        if e.used >= cutoff:
            continue
        for p in (e.path, checksum_path(e.path), e.path.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        gone, gone_bytes = gone + 1, gone_bytes + e.bytes
    return (f"removed {files} orphaned partial file{'s' if files != 1 else ''} ({partial_bytes:,} bytes) and "
            f"{gone} entr{'ies' if gone != 1 else 'y'} unused for {days:g} days ({gone_bytes:,} bytes) from {root}")


def listing(root: Path, *, verify: bool = False) -> list[str]:
    """`sweeper cache`'s lines: a total, one line per entry, then the partial files and what they are."""
    found = entries(root, verify=verify)
    lines = [f"feature cache {root}: {len(found)} entries, {sum(e.bytes for e in found):,} bytes"]
    width = max((len(str(e.path.relative_to(root))) for e in found), default=0)
    for e in found:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.used))
        lines.append(f"  {str(e.path.relative_to(root)):<{width}}  {e.bytes:>15,} bytes  used {used}  {e.state}")
    orphans = []
    for p in partial_files(root):
        orphan, host = is_orphan(p), other_host(p)
        orphans += [p] if orphan else []
        what = ("orphaned (its build is gone)" if orphan else f"written on {host} (not checked from here)" if host
                else "being written")
        with contextlib.suppress(OSError):
            lines.append(f"  {p.relative_to(root)}  {p.stat().st_size:,} bytes  {what}")
    if orphans:
        size = sum(p.stat().st_size for p in orphans if p.exists())
        lines.append(f"run `sweeper cache --prune` to remove {len(orphans)} orphaned partial files ({size:,} bytes)")
    return lines
