"""The plan's trial-epochs: how many epochs a sweep's trials run under Ray's ASHA, as a range.

The baseline trial always runs its epochs (ASHA never stops it), and its score at every rung is the lowest
(`BASELINE_SCORE`): it is phase 1, SGD at a constant lr 1e-4, which the reference report
(phase1_baseline_report.txt) finds underfitting and still climbing at epoch 10, and which every space here is
built to improve on; a trial compared with it alone passes. Each other trial plans the space's expected epochs
(the mean of `epochs` over its distribution, capped at `asha.max_epochs`). ASHA's rungs are Ray's: grace x
factor^k below max epochs.

- *Lower bound*: synchronous survival, a 1/factor share of trials passing each rung.
- *Expected*: Ray's asynchronous rule simulated (`simulate_asha`): trials reach each rung in the order they
  started, each is stopped when its score is below the (1 - 1/factor) quantile of the scores recorded at that
  rung so far (the first always passes, so small sweeps stop fewer than the synchronous share), scores drawn at
  random and kept across rungs (a trial good at one rung is good at the next). Not modelled: TPE proposing
  better trials once its start-up trials are in, which lets more of the later trials through (the projection
  is then low); trials that run side by side reaching a rung out of their start order.
- *Upper bound*: no stopping, every trial at the most epochs the space allows.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BASELINE_SCORE = 0.0  # trial 0's score at every rung in `simulate_asha`: the bottom of the sampled trials' (0 to 1)


def asha_milestones(asha) -> list[int]:
    """Ray's rungs for (grace, factor, max epochs), ascending: grace x factor^k up to max epochs' log."""
    rungs = int(math.log(asha.max_epochs / asha.grace_period) / math.log(asha.reduction_factor) + 1)
    return sorted(int(asha.grace_period * asha.reduction_factor ** k) for k in range(rungs))


def epochs_distribution(space) -> np.ndarray:
    """Every value a trial's `epochs` can take with its probability mass, as an (n, 2) array, capped at
    ASHA's max epochs; the fixed or default value when the space does not search it."""
    spec = next((p for p in space.params if p.name == "epochs"), None)
    if spec is None:
        values = [space.to_config({}).epochs]
    elif spec.type.value == "categorical":
        values = [int(v) for v in spec.choices]
    else:
        values = list(range(int(spec.low), int(spec.high) + 1))
    values = [min(v, space.asha.max_epochs) for v in values]
    return np.array([[v, 1 / len(values)] for v in values])


def synchronous_epochs(epochs: float, milestones: Sequence[int], factor: int) -> float:
    """Expected epochs of one trial planning `epochs` when a 1/factor share passes each rung."""
    total, survive, start = 0.0, 1.0, 0
    for m in [*milestones, math.inf]:
        total += survive * max(0.0, min(epochs, m) - start)
        if epochs <= m:
            break
        start, survive = m, survive / factor
    return total


def simulate_asha(n_trials: int, trial_epochs: np.ndarray, baseline_epochs: int, milestones: Sequence[int],
                  factor: int, *, runs: int = 2000, seed: int = 0, per_trial: bool = False) -> np.ndarray:
    """Trial-epochs of `runs` simulated sweeps under Ray's asynchronous ASHA rule (see the module docstring),
    or with `per_trial` each trial's epochs, (runs, n_trials) in start order.
    `trial_epochs`: an (n, 2) array of planned epochs and their probabilities for the non-baseline trials."""
    rng = np.random.default_rng(seed)
    values, probs = trial_epochs[:, 0].astype(int), trial_epochs[:, 1]
    out = np.empty((runs, n_trials))
    q = 1 - 1 / factor
    for r in range(runs):
        recorded: dict[int, list[float]] = {m: [] for m in milestones}
        for t in range(n_trials):
            score = rng.random()
            planned = baseline_epochs if t == 0 else int(rng.choice(values, p=probs))
            ran = planned
            for m in milestones:
                if m > planned:
                    break
                seen = recorded[m]
                stopped = t != 0 and seen and score < np.quantile(seen, q)
                seen.append(BASELINE_SCORE if t == 0 else score)
                if stopped:
                    ran = m
                    break
            out[r, t] = ran
    return out if per_trial else out.sum(axis=1)


def asha_simulation(space, trials: int) -> np.ndarray:
    """Each trial's epochs in simulated sweeps of `trials` over `space`, (runs, trials) in start order."""
    baseline = min(space.to_config(space.baseline_point()).epochs, space.asha.max_epochs)
    return simulate_asha(trials, epochs_distribution(space), baseline, asha_milestones(space.asha),
                         space.asha.reduction_factor, per_trial=True)


def trial_epoch_range(space, trials: int, sims: np.ndarray | None = None) -> dict[str, float]:
    """Lower, expected and upper trial-epochs of a sweep of `trials` over `space` (module docstring);
    `sims`: `asha_simulation`'s, when already run."""
    dist = epochs_distribution(space)
    baseline = min(space.to_config(space.baseline_point()).epochs, space.asha.max_epochs)
    milestones = asha_milestones(space.asha)
    factor = space.asha.reduction_factor
    others = trials - 1
    lower = baseline + others * float(sum(p * synchronous_epochs(v, milestones, factor) for v, p in dist))
    upper = baseline + others * float(dist[:, 0].max())
    sims = (asha_simulation(space, trials) if sims is None else sims).sum(axis=1)
    return {"lower": round(lower, 1), "expected": round(float(sims.mean()), 1), "upper": float(upper),
            "simulated_p10": float(np.percentile(sims, 10)), "simulated_p90": float(np.percentile(sims, 90))}
