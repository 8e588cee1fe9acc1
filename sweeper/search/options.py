"""How a sweep runs (`SearchOptions`), apart from what it searches (the space file): read by the driver, Ray's
set-up (`ray_local`) and confirm alike, so none of them imports another for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SearchOptions:
    """How a sweep runs (the space file says what it searches)."""

    name: str  # run folder name under out_root
    out_root: Path  # results root; on a cluster, storage every node can write
    trials: int  # total trials, baseline trial 0 included
    max_concurrent: int  # trials at once
    gpus_per_trial: float  # fraction of a GPU per trial (0 on CPU-only machines)
    cpus_per_trial: float  # CPUs per trial; also torch's thread count in the trial
    seed: int  # TPE sampler seed
    address: str | None = None  # join this Ray cluster instead of starting a local one
    resume: bool = False  # continue results/<name> after an interruption
    dashboard: bool = False  # start Ray's dashboard (local runs)

    @property
    def run_dir(self) -> Path:
        return self.out_root / self.name
