"""The sweep's Optuna study database (`study.db`, SQLite) opened so that other readers never stop the sweep.

A user's `sqlite3` query or optuna-dashboard reads the study while the sweep writes it. With SQLite's defaults
(rollback journal, Python's 5 s busy timeout) a read transaction held a few seconds made the sweep's next
write fail, and the sweep ended in tracebacks. Here:

- while the sweep runs the database is in WAL journal mode: readers read the last commit and never block the
  writer. At the sweep's end it goes back to SQLite's default journal (`settle`): a WAL database is three files
  and cannot be read from a read-only folder (SQLite must create its -shm file there).
- a write waits up to `busy_timeout()` seconds for another connection's write lock (a `BEGIN EXCLUSIVE` or
  `IMMEDIATE` transaction), which is Optuna's advice for SQLite (`engine_kwargs={"connect_args": {"timeout"}}`).
- a lock held longer ends the sweep in one line naming the database and who holds it (`locked_error`); the
  finished trials are kept and `--resume` continues.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from sweeper.errors import SweeperError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "SWEEPER_STUDY_TIMEOUT"  # seconds a study write waits for another connection's lock
DEFAULT_TIMEOUT_S = 600.0  # generous: a long dashboard query or an interactive `sqlite3` session ends first
SETTLE_TIMEOUT_S = 5.0  # the end-of-sweep switch back to the default journal: skipped (WAL kept) if busy longer
LOCKED = "database is locked"  # SQLite's message for a lock held past the busy timeout


def busy_timeout() -> float:
    """Seconds a study write waits for a lock: $SWEEPER_STUDY_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise SweeperError(f"${TIMEOUT_ENV}: '{raw}' is not a number of seconds above 0")
    return value


def open_storage(path: Path):
    """Optuna's RDBStorage on `path` in WAL mode, its writes waiting `busy_timeout()` for a lock."""
    import optuna

    timeout = busy_timeout()
    with contextlib.closing(sqlite3.connect(path, timeout=timeout)) as con:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]  # kept by the file until changed
    if mode != "wal":  # e.g. a file system without shared memory: readers may then delay writes
        log.warning("%s: SQLite kept journal mode %s (not WAL): a long read of the study can delay the sweep",
                    path, mode)
    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": timeout}})


def settle(storage, path: Path) -> None:
    """Close `storage`'s connections and put `path` back to SQLite's default journal (one file, readable from a
    read-only folder); kept in WAL, with a note, while another connection holds it."""
    if storage is not None and getattr(storage, "engine", None) is not None:
        storage.engine.dispose()
    if not Path(path).is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=SETTLE_TIMEOUT_S)) as con:
            mode = con.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
    except sqlite3.Error as e:
        mode = str(e)
    if mode != "delete":  # another connection has it open (a dashboard): WAL stays, until a later sweep's end
        log.info("%s: kept in WAL journal mode, another connection has it open (%s); copy its -wal and -shm "
                 "files with it", path, mode)


def is_locked(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is SQLite's lock held past the busy timeout (Ray passes a
    searcher's error on as text, Optuna wraps SQLAlchemy's in its own)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if LOCKED in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def defer_tell(searcher, number: int, value, state) -> None:
    """A trial's end the study could not take (locked past the busy timeout): kept in the searcher's saved state
    and told on the resume (`tell_deferred`); the sweep stops as Ctrl-C stops it (Ray saves its state, the
    trial stays finished), and the driver then ends in `locked_error`'s line. Raised from here, Ray would mark
    the finished trial ERROR instead."""
    searcher.__dict__.setdefault("untold", []).append((number, value, state))
    stop_sweep(searcher)


def stop_sweep(searcher) -> None:
    """Stop the sweep as Ctrl-C does (Ray Tune's own handler saves the experiment and the trials' checkpoints);
    `study_locked` tells the driver to end in `locked_error`'s line."""
    import signal

    if not getattr(searcher, "study_locked", False):
        searcher.study_locked = True
        os.kill(os.getpid(), signal.SIGINT)


def tell_deferred(searcher) -> None:
    """Tell the study the trial ends `defer_tell` kept (a resume, once the study is attached again)."""
    for number, value, state in searcher.__dict__.pop("untold", []):
        searcher._ot_study.tell(number, value, state=state, skip_if_finished=True)  # Ray restores twice
    searcher.study_locked = False


def holders(path: Path) -> list[str]:
    """'pid N (name)' of the other processes that have the database (or its WAL files) open, as far as this
    user may see them."""
    import psutil

    names = {str(Path(path).resolve()) + suffix for suffix in ("", "-wal", "-shm", "-journal")}
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.info["pid"] == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if any(f.path in names for f in proc.open_files()):
                found.append(f"pid {proc.info['pid']} ({proc.info['name']})")
    return found


def locked_error(path: Path, resume: str) -> SweeperError:
    """The one line for a study database another connection held locked past the busy timeout."""
    who = holders(path)
    held = f" by {', '.join(who)}" if who else " by another connection"
    return SweeperError(f"{path}: the study database stayed locked{held} for more than {busy_timeout():g} s "
                        f"(${TIMEOUT_ENV}); the sweep stopped with its finished trials kept: end that "
                        f"transaction and continue with: {resume}")
