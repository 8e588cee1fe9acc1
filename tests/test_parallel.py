"""sweeper.parallel: the ordered process-pool map used for decoding and synthesis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sweeper.parallel import available_cores, default_workers, pool_map

REPO = Path(__file__).resolve().parent.parent


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def test_pool_map_keeps_the_order_for_any_worker_count():
    for workers in (0, 1, 2, 5):
        assert list(pool_map(_square, range(11), workers=workers, chunksize=2)) == [x * x for x in range(11)]
    assert 1 <= default_workers() <= min(8, available_cores())


def test_an_error_in_a_worker_is_raised_as_it_was():
    import pytest

    with pytest.raises(ValueError, match="^three$"):
        list(pool_map(_fail_on_three, range(6), workers=2))


def test_torch_in_a_forked_worker_after_the_parent_used_its_thread_pool_does_not_hang():
    # The parent's OpenMP pool does not survive a fork: a torch op in the worker waited for ever (a label
    # resize in the cache build hung). Run in a fresh process so this one's torch state does not matter.
    code = f"""
import sys, numpy as np, torch
sys.path.insert(0, {str(REPO)!r})
from sweeper.parallel import pool_map
torch.set_num_threads(2)
a = torch.randn(1500, 1500); (a @ a).sum(); torch.randn(64, 256, 256).div(3).sum()
def f(i):
    return float(torch.from_numpy(np.ones((512, 512), np.uint8)).to(torch.float32).div(255).sum())
print(sum(pool_map(f, range(8), workers=2)))
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the forked worker hung (torch after fork)") from None
    assert out.returncode == 0, out.stderr[-2000:]
    assert abs(float(out.stdout) - 8 * 512 * 512 / 255) < 1e-2
