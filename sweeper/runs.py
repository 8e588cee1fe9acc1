"""A run folder on disk: checked before work starts, written atomically, in phase 1's file names.

    OUT/config.json              resolved config, backbone, data, versions
    OUT/metrics.jsonl            one JSON line per epoch (per-class IoU included)
    OUT/evaluation_metrics.txt   phase 1's text layout
    OUT/segmentation_head.pth    the final head's state dict (phase 1's name)
    OUT/*.png                    the four phase-1 plots (drawn by sweeper.report)
    OUT/.lock                    while a command writes the folder: its pid and host (see `run_lock`)
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from sweeper import __version__
from sweeper.errors import SweeperError
from sweeper.results import LOCK_FILE


log = logging.getLogger(__name__)


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` if needed and prove it is writable, before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise SweeperError(f"{path}: output folder is not writable ({e.strerror or e})") from None
    return path


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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (a space file's identity for a resume)."""
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise SweeperError(f"{path}: cannot read ({e.strerror or e})") from None


def check_resume(run_dir: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a resume whose inputs differ from what the sweep was started with, naming the first field.

    `recorded` is sweep.json's `started_with`; a field it lacks (a sweep from an older version) is not checked.
    """
    for field, value in json.loads(dumps(current)).items():  # tuples and paths as JSON has them
        if field in recorded and recorded[field] != value:
            raise SweeperError(f"{run_dir}: cannot resume with {field} = {value!r}: the sweep was started with "
                               f"{recorded[field]!r}, and its trials would be mixed with others (start a new "
                               f"sweep with another --name instead)")


def _cannot_write(path: Path, e: OSError) -> SweeperError:
    full = "; the disk is full: free some space and run the command again" if e.errno == errno.ENOSPC else ""
    return SweeperError(f"{path}: cannot write ({e.strerror or e}){full}; what was there before is unchanged")


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file through `write(f)` under a temporary name and rename it, so readers never see half a file.

    A failed write (a full disk) removes the temporary file, leaves any earlier `path` as it was, and is a
    one-line SweeperError naming `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = _os_error(e)  # torch.save, for one, reports a full disk as a RuntimeError raised from it
        if cause is None:
            raise
        raise _cannot_write(path, cause) from None


def _os_error(e: BaseException | None) -> OSError | None:
    """`e`, or the OSError it was raised from or while handling, if any."""
    for _ in range(8):
        if e is None or isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
    return None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (see `write_atomic`)."""
    write_atomic(path, lambda f: f.write(text.encode()))


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _clean(v: Any) -> Any:
    """NaN/inf -> None, so every line is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON (no NaN) for numpy scalars, arrays and paths too."""
    return json.dumps(_clean(obj), default=_json_default, allow_nan=False, **kw)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, dumps(obj, indent=2) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line; flushed so a crash keeps every finished epoch."""
    line = dumps(record) + "\n"
    try:
        with open(path, "a") as f:
            end = f.seek(0, os.SEEK_END)
            try:
                f.write(line)
                f.flush()
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(end)  # no torn line: the file keeps exactly the records before this one
                raise
    except OSError as e:
        raise _cannot_write(path, e) from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or a one-line SweeperError naming the file."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SweeperError(f"{path}: not readable JSON ({(str(e).strip().splitlines() or ['?'])[0]})") from None
    if not isinstance(obj, dict):
        raise SweeperError(f"{path}: expected a JSON object")
    return obj


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a killed writer) is skipped, and only that one:
    a bad line before it means the file is damaged, a SweeperError naming the file and line."""
    lines = Path(path).read_text().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == last:
                log.info("%s: line %d is torn (an interrupted write): skipped", path, i + 1)
                continue
            raise SweeperError(f"{path}: line {i + 1}: not valid JSON ({e.msg}, column {e.colno})") from None
    return out


def read_csv(path: Path):
    """A CSV table this project wrote (trials.csv, history.csv...) as a DataFrame; an empty file is an empty
    table. Binary content, a torn last line (a copy or write cut short) and a row with missing or extra fields
    are a one-line SweeperError naming the file: a damaged table is never read as fewer trials."""
    import csv
    import io

    import pandas as pd

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SweeperError(f"{path}: cannot read ({e.strerror or e})") from None
    if not raw.strip():
        return pd.DataFrame()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SweeperError(f"{path}: not a CSV table (binary content at byte {e.start})") from None
    if "\0" in text:
        raise SweeperError(f"{path}: not a CSV table (binary content at byte {text.index(chr(0))})")
    if not text.endswith("\n"):
        raise SweeperError(f"{path}: truncated (its last line is cut short); the table is damaged")
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise SweeperError(f"{path}: not a readable CSV table ({e})") from None
    width = len(rows[0])
    for i, row in enumerate(rows[1:], 2):
        if row and len(row) != width:
            raise SweeperError(f"{path}: line {i} has {len(row)} of {width} fields; the table is damaged")
    try:
        return pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise SweeperError(f"{path}: not a readable CSV table ({(str(e).splitlines() or ['?'])[0]})") from None


def check_sqlite(path: Path) -> None:
    """Fail in one line, naming the file, unless `path` is a readable SQLite database (study.db)."""
    import sqlite3

    try:
        with open(path, "rb") as f:
            header = f.read(16)
        if header != b"SQLite format 3\0":
            raise SweeperError(f"{path}: not an SQLite database (the Optuna study is damaged)")
        con = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            con.execute("PRAGMA quick_check").fetchall()
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except OSError as e:
        raise SweeperError(f"{path}: cannot read ({e.strerror or e})") from None
    except sqlite3.Error as e:
        raise SweeperError(f"{path}: not a readable SQLite database ({e}); the Optuna study is damaged") from None


def versions() -> dict[str, str]:
    """Versions that decide the numbers, recorded next to them."""
    return {"sweeper": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "argv": " ".join(sys.argv)}


def save_head(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a head state dict (loadable with weights_only=True)."""
    write_atomic(path, lambda f: torch.save(state, f))


def _fmt_best(values: Sequence[float | None], *, lowest: bool = False) -> tuple[float, int]:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    i = int(np.nanargmin(arr) if lowest else np.nanargmax(arr))
    return float(arr[i]), i + 1


def evaluation_metrics_text(history: Iterable[dict[str, Any]]) -> str:
    """Phase 1's evaluation_metrics.txt byte for byte: final metrics, best results with epoch, per-epoch table."""
    h = list(history)
    col = lambda k: [r.get(k) for r in h]  # noqa: E731
    num = lambda v: float("nan") if v is None else v  # noqa: E731
    last = h[-1]
    lines = ["TRAINING RESULTS", "=" * 50, "", "Final Metrics:"]
    for label, key in [("Train Loss", "train_loss"), ("Val Loss", "val_loss"), ("Train IoU", "train_iou"),
                       ("Val IoU", "val_iou"), ("Train Dice", "train_dice"), ("Val Dice", "val_dice"),
                       ("Train Accuracy", "train_acc"), ("Val Accuracy", "val_acc")]:
        lines.append(f"  Final {label + ':':<16}{num(last.get(key)):.4f}")
    lines += ["=" * 50, "", "Best Results:"]
    for label, key, low in [("Best Val IoU", "val_iou", False), ("Best Val Dice", "val_dice", False),
                            ("Best Val Accuracy", "val_acc", False), ("Lowest Val Loss", "val_loss", True)]:
        v, e = _fmt_best(col(key), lowest=low)
        lines.append(f"  {label + ':':<19}{v:.4f} (Epoch {e})")
    lines += ["=" * 50, "", "Per-Epoch History:", "-" * 100]
    headers = ["Epoch", "Train Loss", "Val Loss", "Train IoU", "Val IoU", "Train Dice", "Val Dice", "Train Acc",
               "Val Acc"]
    # Every column padded to its width, the last one too: the organisers' rows end in spaces, and so do ours.
    lines.append(" ".join(f"{x:<12}" if i else f"{x:<8}" for i, x in enumerate(headers)))
    lines.append("-" * 100)
    keys = ["train_loss", "val_loss", "train_iou", "val_iou", "train_dice", "val_dice", "train_acc", "val_acc"]
    for r in h:
        lines.append(f"{r['epoch']:<8} " + " ".join(f"{num(r.get(k)):<12.4f}" for k in keys))
    return "\n".join(lines) + "\n"
