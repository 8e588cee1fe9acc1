"""Helpers shared by the measurement scripts (rehearsal, GPU check): logging, the CLI as a subprocess, sizes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def du(path: Path) -> int:
    """Bytes on disk under a path (0 if it does not exist)."""
    path = Path(path)
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def sweeper_cli(*args: str, env: dict[str, str], check: bool = True) -> float:
    """Run `python -m sweeper ARGS` from the source tree; its wall seconds (its output goes to stderr)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeper", *args], check=check, env=env, cwd=REPO,
                   stdout=sys.stderr)
    return time.perf_counter() - t
