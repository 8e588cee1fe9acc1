"""The local Ray a sweep starts (sweeper.search.ray_local.start_ray): its processes, as `ps` would list them."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

RAY_PROCESSES = """
import os, sys
from pathlib import Path
from sweeper.search.ray_local import start_ray
from sweeper.search.reaper import ray_descendants
from sweeper.search.driver import SearchOptions

start_ray(SearchOptions(name="x", out_root=Path("."), trials=1, max_concurrent=1, gpus_per_trial=0,
                        cpus_per_trial=1, seed=0, dashboard=sys.argv[1] == "1"))
import ray

assert ray.get(ray.remote(lambda: 6 * 7).remote()) == 42  # Ray works: a task runs
for pid, _ in ray_descendants(os.getpid()):
    try:
        print(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\\0", b" ").decode(errors="replace"))
    except OSError:
        pass
ray.shutdown()
"""


def ray_commands(dashboard: bool) -> list[str]:
    """The command lines of the Ray processes below a driver that ran start_ray and one task."""
    got = subprocess.run([sys.executable, "-c", RAY_PROCESSES, "1" if dashboard else "0"], capture_output=True,
                         text=True, timeout=300, cwd=tempfile.gettempdir())
    assert got.returncode == 0, got.stderr[-3000:]
    return got.stdout.splitlines()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc")
def test_a_local_ray_starts_no_dashboard_process_unless_asked():
    commands = ray_commands(dashboard=False)
    assert any("raylet" in c for c in commands)  # the listing sees Ray's processes
    # Ray 2.60 starts dashboard.py (its API server, port 8265) even with include_dashboard=False
    assert [c for c in commands if "dashboard.py" in c] == []
