"""sweeper.data.parallel: the ordered process-pool map used for decoding and synthesis."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT as REPO

from sweeper.data.parallel import MIN_PARALLEL_ITEMS, available_cores, default_workers, pool_map

MARK = {"set_by_the_parent": False}  # a spawned worker imports this module afresh and sees False


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def _parent_state(_: int) -> bool:
    return MARK["set_by_the_parent"]


def test_pool_map_keeps_the_order_for_any_worker_count():
    for workers in (0, 1, 2, 5):
        assert list(pool_map(_square, range(11), workers=workers, chunksize=2)) == [x * x for x in range(11)]


def test_a_pool_only_where_there_are_enough_items():
    assert default_workers(MIN_PARALLEL_ITEMS - 1) == 0
    assert 1 <= default_workers(MIN_PARALLEL_ITEMS) <= min(8, available_cores())
    assert default_workers(10_000, limit=1) == 1


def test_an_error_in_a_worker_is_raised_as_it_was():
    with pytest.raises(ValueError, match="^three$"):
        list(pool_map(_fail_on_three, range(6), workers=2))


def test_workers_are_spawned_not_forked():
    # A forked worker copies the parent's memory, locks held by its threads included (Ray's gRPC threads: a
    # forked pool worker died holding the pool's queue lock and the cache build hung). A spawned one starts
    # clean: it does not see what the parent changed at run time.
    MARK["set_by_the_parent"] = True
    try:
        assert list(pool_map(_parent_state, range(4), workers=2)) == [False] * 4
    finally:
        MARK["set_by_the_parent"] = False


def test_torch_work_in_the_workers_after_the_parent_used_its_thread_pool_finishes():
    # torch's OpenMP pool does not survive a fork: a label resize in a forked worker waited for ever once the
    # parent had used it. In a fresh process, so this one's torch state does not matter.
    code = f"""
import sys, functools, numpy as np, torch
sys.path.insert(0, {str(REPO)!r})
from sweeper.training.config import LabelMode
from sweeper.data.dataset import resize_labels
from sweeper.data.parallel import pool_map
torch.set_num_threads(2)
a = torch.randn(1500, 1500); (a @ a).sum(); torch.randn(64, 256, 256).div(3).sum()
resize = functools.partial(resize_labels, height=64, width=96, mode=LabelMode.PHASE1)
maps = [np.full((128, 192), i % 10, np.uint8) for i in range(8)]
print(sum(int(m.sum()) for m in pool_map(resize, maps, workers=2)))
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError("the pool's workers hung (torch after fork)") from None
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) == sum((i % 10) * 64 * 96 for i in range(8))
