"""One sweep of scripts/bench/search_efficiency.py: the methods it compares, a sweep of each under a budget of
trial-epochs (through sweeper's Ray driver, or Optuna alone), the epochs it reported in order, and its winner.

Finished sweeps are kept as JSON in the work folder, so a measurement stopped half-way continues where it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.search.options import SearchMethod

RAY_WORKER_NICENESS = 15  # Ray 2.60 starts its trial workers at nice 15 (its worker_niceness setting)


@dataclass(frozen=True)
class Method:
    """One way to search: through sweeper's Ray driver (`search`), or Optuna alone with a pruner (`pruner`)."""

    label: str  # what the figure and the JSON call it
    search: SearchMethod | None = None  # a Ray sweep through run_search
    pruner: str | None = None  # Optuna alone: 'sha' or 'hyperband'


METHODS = {
    "sweeper": Method("sweeper default: TPE + ASHA + phase-1 trial", search=SearchMethod()),
    "random_asha": Method("random + ASHA (Ray Tune's default)", search=SearchMethod(sampler="random",
                                                                                   baseline_trial=False)),
    "tpe_full": Method("TPE + phase-1 trial, no early stopping", search=SearchMethod(early_stopping=False)),
    "optuna_sha": Method("Optuna alone: TPE + SuccessiveHalvingPruner", pruner="sha"),
    "optuna_hyperband": Method("Optuna alone: TPE + HyperbandPruner", pruner="hyperband"),
}


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN (a single seed's spread) as null."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def anytime(events: list[tuple[int, int, float]], budget: int) -> dict[str, Any]:
    """From (trial, epoch, value) in the order reported: the best value after each trial-epoch up to the budget,
    and the trial holding the best (the first to reach it)."""
    curve, best, winner = [], None, None
    for trial, _, value in events[:budget]:
        if value == value and (best is None or value > best):  # NaN never wins
            best, winner = value, trial
        curve.append(best)
    return {"curve": curve, "winner": winner, "winner_sweep_score": best, "trial_epochs_counted": len(curve),
            "trial_epochs_run": len(events), "trials_started": len({t for t, _, _ in events[:budget]}),
            "events": [list(e) for e in events[:budget]]}


def search_args(argv: list[str]) -> argparse.Namespace:
    """`sweeper search`'s own options for the data, backbone and device (its parser, its defaults)."""
    from sweeper.cli.main import build_parser

    return build_parser().parse_args(["-q", "search", *argv])


def prepared(args: argparse.Namespace, space):
    """The data and backbone as `sweeper search` prepares them (the feature cache built once, then read)."""
    from sweeper.cli.inputs import prepare

    base = space.to_config(space.baseline_point())
    return prepare(args, height=base.image_height, width=base.image_width, label_mode=base.label_mode,
                   train_variants=space.train_variants(base.label_mode.value))


# --------------------------------------------------------------------------- through sweeper's Ray driver


def budget_stopper(budget: int, metric: str):
    """A Ray Tune stopper that records every reported epoch (trial number, epoch, metric) and stops the sweep
    once `budget` epochs have been reported."""
    from ray.tune import Stopper

    from sweeper.rundir.layout import TRIAL_KEY

    class Budget(Stopper):
        def __init__(self) -> None:
            self.events: list[tuple[int, int, float]] = []

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            self.events.append((int(result["config"][TRIAL_KEY]), int(result["epoch"]), float(result[metric])))
            return False

        def stop_all(self) -> bool:
            return len(self.events) >= budget

    return Budget()


def ray_sweep(name: str, method: Method, seed: int, ctx: dict[str, Any], p) -> dict[str, Any]:
    """One sweep through sweeper's driver, stopped at the budget; its anytime curve, winner and wall time."""
    from sweeper.rundir.records import trial_configs
    from sweeper.search.driver import run_search
    from sweeper.search.options import SearchOptions

    space, budget = ctx["space"], ctx["budget"]
    opts = SearchOptions(name=f"{name}-seed{seed}", out_root=ctx["work"] / "sweeps", trials=budget,
                         max_concurrent=ctx["concurrent"], gpus_per_trial=ctx["gpus"], cpus_per_trial=1.0, seed=seed)
    stopper = budget_stopper(budget, space.metric)
    shutil.rmtree(opts.run_dir, ignore_errors=True)  # an interrupted attempt's folder: the sweep runs again whole
    started = time.perf_counter()
    run_search(space, p.data, opts, trial_overrides=ctx["overrides"], progress=False, method=method.search,
               stop=stopper)
    out = {"seed": seed, "wall_seconds": round(time.perf_counter() - started, 1), "trials_at_once": ctx["concurrent"],
           "load_average_after": list(os.getloadavg()), **anytime(stopper.events, budget)}
    if out["winner"] is not None:
        out["winner_config"] = trial_configs(opts.run_dir)[out["winner"]]
    return out


# --------------------------------------------------------------------------- Optuna alone


class BudgetSpent(Exception):
    """The sweep's budget of trial-epochs ran out during a trial."""


def make_pruner(kind: str, space):
    """Optuna's own pruner at the space's ASHA settings (first rung, largest epoch count, reduction factor)."""
    import optuna

    a = space.asha
    if kind == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=a.grace_period, reduction_factor=a.reduction_factor)
    return optuna.pruners.HyperbandPruner(min_resource=a.grace_period, max_resource=a.max_epochs,
                                          reduction_factor=a.reduction_factor)


def optuna_sweep(args: argparse.Namespace, pruner: str, seed: int, budget: int,
                 overrides: dict[str, Any]) -> dict[str, Any]:
    """One sweep of Optuna alone, in this process, one trial at a time: the space's own sampler function and
    sweeper's TPE, Optuna's pruner at the space's rungs, each trial trained by `run_trial` (one torch thread)."""
    import optuna
    import torch

    from sweeper.search.driver import make_sampler, optuna_experimental_ok
    from sweeper.search.space import load_space
    from sweeper.search.trial import run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.nice(max(0, RAY_WORKER_NICENESS - os.nice(0)))  # as Ray's trial workers: wall times compare on a shared machine
    space = load_space(args.space_path)
    p = prepared(args, space)
    torch.set_num_threads(1)
    study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize",
                                sampler=make_sampler(space, seed=seed), pruner=make_pruner(pruner, space))
    events: list[tuple[int, int, float]] = []
    configs: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    with optuna_experimental_ok():
        while len(events) < budget:
            trial = study.ask()
            configs[trial.number] = {**space.suggest(trial), **overrides, "threads": 1}
            last: dict[str, Any] = {}

            def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
                last.update(metrics)
                value, epoch = float(metrics[space.metric]), int(metrics["epoch"])
                events.append((trial.number, epoch, value))
                trial.report(value, epoch)
                if len(events) >= budget:
                    raise BudgetSpent
                if trial.should_prune():
                    raise optuna.TrialPruned

            try:
                run_trial(space.to_config(configs[trial.number]), p.data, report=report, objective=space.objective)
                study.tell(trial, float(last[space.objective.column]))
            except (optuna.TrialPruned, BudgetSpent):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    out = {"seed": seed, "wall_seconds": round(time.perf_counter() - started, 1), "trials_at_once": 1,
           "load_average_after": list(os.getloadavg()), **anytime(events, budget)}
    if out["winner"] is not None:
        out["winner_config"] = configs[out["winner"]]
    return out


# --------------------------------------------------------------------------- finished sweeps, kept


def sweep_file(work: Path, name: str, seed: int) -> Path:
    return work / "sweeps" / f"{name}-seed{seed}.json"


def save_sweep(work: Path, name: str, run: dict[str, Any], tag: dict[str, Any]) -> None:
    """One finished sweep's results, kept in the work folder with what it ran on (`tag`: budget, space, data)."""
    path = sweep_file(work, name, run["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plain({**run, "ran_on": tag})))


def done_sweep(work: Path, name: str, seed: int, tag: dict[str, Any]) -> dict[str, Any] | None:
    """A sweep the work folder already holds, run on the same budget, space and data; else None."""
    path = sweep_file(work, name, seed)
    run = json.loads(path.read_text()) if path.is_file() else None
    return run if run is not None and run.get("ran_on") == tag else None
