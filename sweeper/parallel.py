"""Work spread over this machine's cores: how many there are, and an ordered map over a process pool.

Used where the per-item work is CPU-bound Python/PIL (decoding and resizing PNGs, drawing synthetic scenes)
and the items are independent, so the result does not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity: a container's or Slurm's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(limit: int = 8) -> int:
    """Worker processes for decoding: every available core, at most `limit` (past it the pool's memory grows
    and the consumer, not decoding, is the bottleneck)."""
    return max(1, min(limit, available_cores()))


def pool_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, chunksize: int = 4) -> Iterator[R]:
    """`map(fn, items)` in order, over `workers` forked processes (in this process when `workers` <= 1).

    `fn` must be a module-level function. An exception raised by `fn` is raised here as it was raised there.
    """
    items = list(items)
    workers = min(workers, len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    # fork: the workers inherit the loaded modules (no re-import per worker); they touch no CUDA state
    with contextlib.closing(multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread)) as pool:
        try:
            yield from pool.imap(fn, items, chunksize=chunksize)
        finally:
            pool.terminate()


def _one_thread() -> None:
    """A forked worker's torch runs on one thread, as a DataLoader worker's does: the parent's OpenMP pool does
    not survive the fork, and a torch op that uses it there waits for ever (seen: a label resize hung)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
