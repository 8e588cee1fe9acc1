"""The sweep's objective: the per-epoch metric that ranks trials, and which way is better.

One `Objective` (the space file's `metric` and `mode`) decides everything that says "best": the searcher and
ASHA, each trial's kept best-epoch head, the tables' `best_<metric>` / `last_<metric>` columns, `confirm`,
`evaluate` / `export`'s `best`, and the report. Only a metric that means the same in every trial can rank
trials; `check_metric` refuses the others with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sweeper.errors import SweeperError

# Metrics every trial reports every epoch on the same validation split, so two trials' values compare.
COMPARABLE = {"val_iou": "val IoU", "val_miou": "val mIoU", "val_dice": "val Dice", "val_acc": "val accuracy"}
NOT_COMPARABLE = {
    "val_loss": "it is weighted by each trial's own class weights, so two trials' losses measure different things",
    "train_loss": "it is weighted by each trial's own class weights and scored on its own training labels",
    **{f"train_{m}": "it is scored on each trial's own training labels and flips, and only when train_metrics is on"
       for m in ("iou", "dice", "acc", "miou")},
}
METRIC_KEY, MODE_KEY = "objective_metric", "objective_mode"  # in a trial's config: what its best epoch is


@dataclass(frozen=True)
class Objective:
    """What ranks trials: a per-epoch metric and whether higher ('max') or lower ('min') is better."""

    metric: str = "val_iou"  # a key in COMPARABLE
    mode: str = "max"  # 'max' or 'min'

    @property
    def column(self) -> str:
        """The tables' column of a trial's best epoch's value, e.g. 'best_val_miou'."""
        return f"best_{self.metric}"

    @property
    def last_column(self) -> str:
        return f"last_{self.metric}"

    @property
    def label(self) -> str:
        """'val mIoU': the metric in words."""
        return COMPARABLE.get(self.metric, self.metric)

    @property
    def ascending(self) -> bool:
        """Sort order that puts the best first."""
        return self.mode == "min"

    def gain(self, value: Any, reference: Any) -> Any:
        """How much better `value` is than `reference` (positive = better), in the metric's units."""
        return value - reference if self.mode == "max" else reference - value

    def trial_keys(self) -> dict[str, str]:
        """The config entries that tell a trial its objective (see `from_config`)."""
        return {METRIC_KEY: self.metric, MODE_KEY: self.mode}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Objective":
        """A trial config's objective (val IoU, max, for configs written before it was recorded)."""
        return cls(str(config.get(METRIC_KEY, "val_iou")), str(config.get(MODE_KEY, "max")))


def check_metric(metric: Any, source: str) -> str:
    """`metric` if trials can be ranked by it, else a one-line SweeperError naming `source` and why not."""
    if metric in NOT_COMPARABLE:
        raise SweeperError(f"{source}: metric: {metric} cannot rank trials: {NOT_COMPARABLE[metric]}; "
                           f"use one of {', '.join(COMPARABLE)}")
    if metric not in COMPARABLE:
        raise SweeperError(f"{source}: metric: expected one of {', '.join(COMPARABLE)} (reported by every trial "
                           f"every epoch on the same validation split), got {metric!r}")
    return metric


MIN_SEEDS = 2  # a standard deviation needs two values: with fewer, no gain can be told from seed noise


def confirm_verdict(*, baseline: bool, seeds: int, baseline_seeds: int, exceeds: bool | None,
                    has_gain: bool = True) -> str:
    """A confirmed config's verdict: its gain over the baseline is real (beyond twice the seed spread),
    within the seed noise, or cannot be told (it or the baseline ran fewer than MIN_SEEDS seeds); with no
    gain at all (every baseline seed failed), there is no baseline to compare with."""
    if baseline:
        return "reference"
    if not has_gain:
        return "no baseline to compare with"
    if min(seeds, baseline_seeds) < MIN_SEEDS:
        return f"cannot tell: fewer than {MIN_SEEDS} seeds"
    return "real: gain > 2x seed spread" if exceeds else "within seed noise"


def best_index(values: Sequence[float | None], *, mode: str = "max") -> int | None:
    """Index of the best value ('max' or 'min'), NaN and None skipped, the earliest on ties; None if none is a number.

    Python's max() is not this: with a NaN first it returns the NaN, so a best epoch would depend on order.
    """
    arr = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    if np.isnan(arr).all():  # also true for no values at all
        return None
    return int(np.nanargmax(arr) if mode == "max" else np.nanargmin(arr))


def best_value(values: list[Any], *, mode: str = "max") -> float:
    """The best of an epoch series, NaN and missing values skipped (NaN when none is a number)."""
    i = best_index(values, mode=mode)
    return math.nan if i is None else float(values[i])
