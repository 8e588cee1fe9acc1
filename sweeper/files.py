"""Files on disk, written so that a reader never sees half of one: the one atomic writer, JSON and JSON-lines
in strict JSON, the one CSV reader, and checks that fail in one line naming the file.

Every module that writes or reads a run folder's files goes through these; `sweeper.rundir.layout` says what the
files are. No torch or numpy here (pandas only inside `read_csv`): `sweeper report` reads a run folder without
them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from sweeper.errors import SweeperError

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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (a space file's identity for a resume)."""
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise SweeperError(f"{path}: cannot read ({e.strerror or e})") from None


def _cannot_write(path: Path, e: OSError, hint: str = "") -> SweeperError:
    """One line for a failed write; on a full disk the advice is `hint` (say 'free some space' once), else the
    default advice."""
    advice = hint
    if e.errno == errno.ENOSPC:
        advice = f"the disk is full: {hint or 'free some space and run the command again'}"
    return SweeperError(f"{path}: cannot write ({e.strerror or e}); what was there before is unchanged"
                        + (f"; {advice}" if advice else ""))


@contextlib.contextmanager
def atomic_path(path: Path, *, tag: str = "tmp", hint: str = "") -> Iterator[Path]:
    """The one atomic writer: a temporary path beside `path` to write, renamed over `path` when the block
    ends, so readers never see half a file. A failure (a full disk) removes the temporary file, leaves any
    earlier `path` as it was, and is a one-line SweeperError naming `path` (plus `hint`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{tag}-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, SweeperError):  # already one line naming its file (a damaged image, a full cache folder)
            raise
        cause = _os_error(e)  # torch.save, for one, reports a full disk as a RuntimeError raised from it
        if cause is None:
            raise
        raise _cannot_write(path, cause, hint) from None


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file through `write(f)` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _os_error(e: BaseException | None) -> OSError | None:
    """`e`, or the OSError it was raised from or while handling, if any."""
    for _ in range(8):
        if e is None or isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
    return None


def size_text(nbytes: float) -> str:
    """Bytes for a message, in the unit that shows them: '1.25 GB', '2.1 MB' (not '0.00 GB'), '10.0 kB'."""
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.2f} GB"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.1f} kB"


def shown(text: str) -> str:
    """`text` fit for a UTF-8 file, a figure or a terminal. A Linux file name is bytes, and Python keeps the bytes
    of one that are not UTF-8 as lone surrogates (`os.fsdecode`), which no UTF-8 writer accepts: they become
    `\\xNN` escapes here (b'\\xff.png' is shown as '\\xff.png')."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (see `write_atomic`); file names that are not UTF-8 as `shown` has them."""
    write_atomic(path, lambda f: f.write(shown(text).encode()))


def _json_default(v: Any) -> Any:
    # numpy by duck typing (arrays have .tolist, scalars .item): this module does not import numpy
    if isinstance(v, Path):
        return str(v)
    if callable(getattr(v, "tolist", None)):
        return v.tolist()
    if callable(getattr(v, "item", None)):
        return v.item()
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
    """Write `obj` as indented strict JSON, atomically."""
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
