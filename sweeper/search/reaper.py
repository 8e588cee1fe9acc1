"""A local Ray ends with the driver that started it, even when the driver is killed with SIGKILL.

Ray ties its gcs_server and raylet to the driver (PR_SET_PDEATHSIG), but the raylet's dashboard and
runtime-env agents only poll for the raylet: after a `kill -9` of the driver they notice within ~5 s and then
wait about a minute on the dead GCS before exiting, one still listening on loopback (measured with Ray 2.60).
`watch_driver` starts a small watcher process in its own session that holds the read end of a pipe whose
write end only the driver has: when the driver dies, however it dies, the kernel closes that end, and the
watcher ends the Ray processes the driver had started. The process tree and each process's identity (pid and
start time) come from psutil.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import psutil

log = logging.getLogger(__name__)

GRACE_S = 3.0  # after SIGTERM, seconds before SIGKILL


def ray_descendants(pid: int) -> list[tuple[int, float]]:
    """(pid, start time) of the Ray processes below `pid`: gcs_server, raylet, its agents and workers. With the
    pid, the start time names one process (pids are reused)."""
    out = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return out
    for child in children:
        try:
            if "ray" in " ".join(child.cmdline()).lower():
                out.append((child.pid, child.create_time()))
        except psutil.Error:  # gone, or not ours to read
            continue
    return out


def watch_driver() -> None:
    """Start the watcher for the Ray processes this process has started (call right after ray.init)."""
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


def _alive(procs: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The processes of `procs` still running: same pid, same start time, not a zombie."""
    out = []
    for pid, started in procs:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                out.append((pid, started))
        except psutil.Error:
            continue
    return out


def _signal(procs: list[tuple[int, float]], sig: int) -> None:
    for pid, _ in procs:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> int:
    """The watcher: read the process list, wait for the driver's end of the pipe to close, end what is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the driver's terminal is the driver's business
    procs = [(int(p), float(t)) for p, t in json.loads(sys.stdin.readline() or "[]")]
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
