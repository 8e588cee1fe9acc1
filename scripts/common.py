"""Helpers shared by the measurement scripts (bench, rehearsal, GPU check, cache dtype): logging, timing,
work folders, background samplers, the CLI as a subprocess, sizes.

Light on purpose (no torch, no sweeper import): `scripts/checks/gpu_check.py` imports it before it knows whether
the machine has what the package needs.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; the platform's word elsewhere): timings name the machine they ran on."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown")
    except OSError:
        import platform
        return platform.processor() or "unknown"


def median(xs: list[float]) -> float:
    """The median as a plain float (JSON-ready): timings on a shared machine are reported as medians."""
    return float(statistics.median(xs))


def repeat(fn: Callable[[], Any], n: int, warmup: int = 1) -> list[float]:
    """Wall seconds of n calls of fn after `warmup` untimed calls (the first call pays for lazy set-up)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def du(path: Path) -> int:
    """Bytes on disk under a path (0 if it does not exist)."""
    path = Path(path)
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def token_bytes(data: Any) -> int:
    """Bytes of a TrainData's cached tokens, train and val (the feature cache's size in memory; the
    object store holds more: labels and pixel counts too, see sweeper's `trial_bytes`)."""
    return int(data.train.tokens.array.nbytes + data.val.tokens.array.nbytes)


@contextmanager
def work_dir(given: Path | None, prefix: str) -> Iterator[Path]:
    """The folder a script works in: `given` (created, kept) or a fresh temp folder removed at the end,
    so that data, caches and runs of a measurement never pile up in /tmp."""
    path = Path(given) if given is not None else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if given is None:
            shutil.rmtree(path, ignore_errors=True)


class Sampler(threading.Thread):
    """Calls `sample()` at once, then every `interval` s, in a daemon thread while in a `with` block.
    Subclasses keep what they read; `sample` returning False stops the sampling (the tool it reads is
    missing)."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.done = threading.Event()

    def sample(self) -> bool | None:
        raise NotImplementedError

    def run(self) -> None:
        while self.sample() is not False and not self.done.wait(self.interval):
            pass

    def __enter__(self) -> "Sampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(timeout=10)


def sweeper_cli(*args: str, env: dict[str, str], check: bool = True) -> float:
    """Run `python -m sweeper ARGS` from the source tree; its wall seconds (its output goes to stderr)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeper", *args], check=check, env=env, cwd=REPO,
                   stdout=sys.stderr)
    return time.perf_counter() - t


def run_stages(stages: list[tuple[str, float, Callable[[], dict]]], result: dict[str, Any], *,
               seconds_left: Callable[[], float], out_file: Path, tag: str) -> None:
    """Run (name, seconds it needs, function) stages in order into `result[name]`, each timed; one that the
    time left cannot hold is skipped and says so; one that fails records its error and the others still run;
    `out_file` is rewritten after each, so a run cut short keeps what it measured."""
    import json
    import os

    for name, needs, fn in stages:
        left = seconds_left()
        if left < needs:
            result[name] = {"skipped": f"{left:.0f} s left, {needs:.0f} s needed"}
            log(f"{tag}: {name} skipped ({left:.0f} s left)")
            continue
        log(f"{tag}: {name} ({left:.0f} s left)")
        t = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failing stage must not hide the others' figures
            result[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        result[name]["stage_seconds"] = round(time.perf_counter() - t, 1)
        result["load_average"] = os.getloadavg()
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2, default=str))
