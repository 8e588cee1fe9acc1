"""One owner at a time for a run folder (`run_lock`): a kernel lock on OUT/.lock through `filelock`, and in that
file the owner's note (pid, host, command, start) that a refused second command names.

The kernel releases the lock when its process ends, however it ends (a `kill -9` too), so a folder left by a
dead command is taken over at once; its note, left behind, is named in a warning. A note from another machine is
never taken over: a folder shared over the network may still be written there, where this machine's kernel lock
cannot see it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import filelock

from sweeper.errors import SweeperError
from sweeper.rundir.layout import LOCK_FILE

log = logging.getLogger(__name__)


def read_note(text: bytes | str) -> dict[str, Any] | None:
    """An owner's note, or None when it is empty or not one (its owner died while writing it)."""
    try:
        owner = json.loads(text)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _in_use(run_dir: Path, owner: dict[str, Any] | None, path: Path) -> SweeperError:
    if owner is None:
        return SweeperError(f"{run_dir}: in use by another process that is starting ({path})")
    return SweeperError(f"{run_dir}: in use by {owner.get('command', 'another run')} (pid {owner['pid']} on "
                        f"{owner.get('host', '?')}, since {owner.get('since', '?')}); wait for it to end, or delete "
                        f"{path} if that process is gone")


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str) -> Iterator[Path]:
    """Own `run_dir` for the duration, or raise a one-line SweeperError naming its owner; yields the note's path.

    The note is written through the locked descriptor once the kernel lock is held (filelock's `on_acquired`),
    and the file is removed, still locked, on exit.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "command": command, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    left: dict[str, Any] = {}

    def take(fd: int) -> None:  # the kernel lock is ours: read what a dead owner left, then write our note
        os.lseek(fd, 0, os.SEEK_SET)
        left["note"] = read_note(os.read(fd, 1 << 16) or b"null")
        if (left["note"] or {}).get("host", host) != host:
            return  # another machine's: left as it is, refused below
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())

    lock = filelock.FileLock(path, timeout=0, on_acquired=take)
    try:
        lock.acquire()
    except filelock.Timeout:
        with contextlib.suppress(OSError):
            raise _in_use(run_dir, read_note(path.read_bytes()), path) from None
        raise _in_use(run_dir, None, path) from None
    except OSError as e:
        raise SweeperError(f"{path}: cannot create the run folder's lock file ({e.strerror or e})") from None
    try:
        owner = left.get("note")
        if owner is not None and owner.get("host", host) != host:
            raise _in_use(run_dir, owner, path)
        if owner is not None:
            log.warning("%s: taking over the lock of %s (pid %d on %s), which is no longer running",
                        run_dir, owner.get("command", "a run"), owner["pid"], host)
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # while still locked: no other process can be writing its note into it
    finally:
        lock.release()
