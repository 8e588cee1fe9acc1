"""Work spread over this machine's cores: how many there are, and an ordered map over a process pool.

Used where the per-item work is CPU-bound Python/PIL (decoding and resizing PNGs, drawing synthetic scenes)
and the items are independent, so the result does not depend on the number of workers.

Workers are spawned, not forked: the parent may hold threads (Ray's gRPC, torch's pool) whose locks a fork
copies held; a forked pool worker then died or waited for ever (seen: a cache build hung under a test that
had run Ray in the same process). A spawned worker starts clean but pays for its imports (about a second),
so a pool is used only where there are enough items (`MIN_PARALLEL_ITEMS`) to win that back.
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


MIN_PARALLEL_ITEMS = 64  # fewer items are done in this process: spawning workers would cost more than they save


def default_workers(items: int, limit: int = 8) -> int:
    """Worker processes for `items` items: every available core, at most `limit` (past it the pool's memory
    grows and the consumer, not decoding, is the bottleneck); none (this process) below MIN_PARALLEL_ITEMS."""
    return 0 if items < MIN_PARALLEL_ITEMS else max(1, min(limit, available_cores()))


def pool_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, chunksize: int = 4) -> Iterator[R]:
    """`map(fn, items)` in order, over `workers` spawned processes (in this process when `workers` <= 1).

    `fn` must be importable (a module-level function, or a partial of one). An exception raised by `fn` is
    raised here as it was raised there.
    """
    items = list(items)
    workers = min(workers, len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    with contextlib.closing(multiprocessing.get_context("spawn").Pool(workers, initializer=_one_thread)) as pool:
        try:
            yield from pool.imap(fn, items, chunksize=chunksize)
        finally:
            pool.terminate()


def _one_thread() -> None:
    """A worker's torch (imported now or later) runs on one thread, as a DataLoader worker's does: `workers`
    processes each with a pool of every core would oversubscribe the machine."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
