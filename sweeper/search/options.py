"""How a sweep runs (`SearchOptions`), apart from what it searches (the space file): read by the driver, Ray's
set-up (`ray_local`) and confirm alike, so none of them imports another for it. `SearchMethod` is what proposes
and what stops trials: sweeper's default, or the alternatives scripts/bench/search_efficiency.py measures it against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sweeper.errors import SweeperError


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


SAMPLERS = ("tpe", "random")  # SearchMethod.sampler's choices


@dataclass(frozen=True)
class SearchMethod:
    """What proposes trials and what stops them. The default is sweeper's: TPE, ASHA, the phase-1 trial first."""

    sampler: str = "tpe"  # 'tpe' (seeded multivariate TPE, constant liar with trials at once) or 'random'
    early_stopping: bool = True  # ASHA on the epoch counter (the space's asha:); False: every trial runs its epochs
    baseline_trial: bool = True  # trial 0 is the phase-1 point, which ASHA never stops

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SweeperError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
