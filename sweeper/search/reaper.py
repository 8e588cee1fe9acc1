"""A local Ray ends with the driver that started it, even when the driver is killed with SIGKILL.

Ray ties its gcs_server and raylet to the driver (PR_SET_PDEATHSIG), but the raylet's dashboard and
runtime-env agents only poll for the raylet: after a `kill -9` of the driver they notice within ~5 s and then
wait about a minute on the dead GCS before exiting, one still listening on loopback (measured with Ray 2.60).
`watch_driver` starts a small watcher process in its own session that holds the read end of a pipe whose
write end only the driver has: when the driver dies, however it dies, the kernel closes that end, and the
watcher ends the Ray processes the driver had started. Linux only (it reads /proc); elsewhere it does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

GRACE_S = 3.0  # after SIGTERM, seconds before SIGKILL


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state first), or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot: with the pid, it names one process (pids are reused)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def ray_descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of the Ray processes below `pid`: gcs_server, raylet, its agents and workers."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(int(stat.parent.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().lower()
            except OSError:
                continue
            started = start_time(child)
            if b"ray" in cmdline and started is not None:
                out.append((child, started))
    return out


def watch_driver() -> None:
    """Start the watcher for the Ray processes this process has started (call right after ray.init)."""
    if not Path("/proc/self/stat").is_file():
        return
    procs = ray_descendants(os.getpid())
    if not procs:
        return
    read_end, write_end = os.pipe()  # non-inheritable: only this process holds the write end
    try:
        subprocess.Popen([sys.executable, "-m", "sweeper.search.reaper"], stdin=read_end, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as e:
        os.close(write_end)
        log.warning("could not start the watcher that stops Ray if this process is killed (%s); after a kill -9, "
                    "run `ray stop`", e)
        return
    finally:
        os.close(read_end)
    os.write(write_end, (json.dumps(procs) + "\n").encode())
    # write_end stays open for the life of this process on purpose: its closing is the signal
    log.debug("watching %d Ray processes: %s", len(procs), procs)


def _alive(procs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for pid, started in procs:
        fields = _stat(pid)
        if fields and fields[0] != "Z" and start_time(pid) == started:
            out.append((pid, started))
    return out


def _signal(procs: list[tuple[int, int]], sig: int) -> None:
    for pid, _ in procs:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> int:
    """The watcher: read the process list, wait for the driver's end of the pipe to close, end what is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the driver's terminal is the driver's business
    procs = [(int(p), int(t)) for p, t in json.loads(sys.stdin.readline() or "[]")]
    sys.stdin.read()  # returns at EOF: the driver has exited (a normal exit has already stopped Ray)
    left = _alive(procs)
    if left:
        _signal(left, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while (left := _alive(left)) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal(left, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
