"""A baseline run folder's bookkeeping: one owner at a time (`run_lock`), a resume's inputs checked against the
sweep's, the versions recorded next to the numbers, and the head saved in phase 1's format.

    OUT/config.json              resolved config, backbone, data, versions
    OUT/metrics.jsonl            one JSON line per epoch (per-class IoU included)
    OUT/evaluation_metrics.txt   phase 1's text layout
    OUT/segmentation_head.pth    the final head's state dict (phase 1's name)
    OUT/*.png                    the four phase-1 plots (drawn by sweeper.report)
    OUT/.lock                    while a command writes the folder: its pid and host (see `run_lock`)

File names live in `sweeper.rundir.layout`, the atomic writers and readers in `sweeper.files`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from sweeper import __version__
from sweeper.errors import SweeperError
from sweeper.files import dumps, write_atomic
from sweeper.rundir.layout import LOCK_FILE


log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's owner record, or None when it is empty or not JSON (its owner died while writing it)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str) -> Iterator[Path]:
    """Own `run_dir` for the duration: one process writes a run folder at a time.

    The lock file is created with O_EXCL (atomic, also on NFS v3+), holds the owner's pid and host, and is
    removed on exit. A second owner gets a one-line SweeperError naming the first; a lock whose process is
    gone from this host (a kill -9) is taken over with a warning. A lock from another host is never taken
    over: its owner may still be running there.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "command": command, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(5):  # a few rounds: another process may take over the same stale lock at the same time
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            if owner is None:
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < 10:  # its owner is writing it right now
                    raise SweeperError(f"{run_dir}: in use by another process that is starting ({path})") from None
                log.warning("%s: taking over an unreadable lock file left %.0f s ago", run_dir, age)
            elif owner.get("host") == host and not _pid_alive(owner["pid"]):
                log.warning("%s: taking over the lock of %s (pid %d on %s), which is no longer running",
                            run_dir, owner.get("command", "a run"), owner["pid"], host)
            else:
                raise SweeperError(
                    f"{run_dir}: in use by {owner.get('command', 'another run')} (pid {owner['pid']} on "
                    f"{owner.get('host', '?')}, since {owner.get('since', '?')}); wait for it to end, or delete "
                    f"{path} if that process is gone") from None
            # Move the stale lock aside under a name of our own, and check that what moved is the stale
            # record: another process taking it over at the same time may already have put its own there.
            aside = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            moved = _read_lock(aside)
            if moved != owner:
                with contextlib.suppress(OSError):
                    os.link(aside, path)  # put the live lock back (fails only if yet another one is there)
                aside.unlink()
                continue
            aside.unlink()
            continue
        except OSError as e:
            raise SweeperError(f"{path}: cannot create the run folder's lock file ({e.strerror or e})") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        break
    else:
        raise SweeperError(f"{path}: could not take the lock (other processes keep taking it)")
    try:
        yield path
    finally:
        owner = _read_lock(path)
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == host:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def check_resume(run_dir: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a resume whose inputs differ from what the sweep was started with, naming the first field.

    `recorded` is sweep.json's `started_with`; a field it lacks (a sweep from an older version) is not checked.
    """
    for field, value in json.loads(dumps(current)).items():  # tuples and paths as JSON has them
        if field in recorded and recorded[field] != value:
            raise SweeperError(f"{run_dir}: cannot resume with {field} = {value!r}: the sweep was started with "
                               f"{recorded[field]!r}, and its trials would be mixed with others (start a new "
                               f"sweep with another --name instead)")


def versions() -> dict[str, str]:
    """Versions that decide the numbers, recorded next to them."""
    return {"sweeper": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "argv": " ".join(sys.argv)}


def save_head(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a head state dict (loadable with weights_only=True)."""
    write_atomic(path, lambda f: torch.save(state, f))


