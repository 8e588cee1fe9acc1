"""Phase-2 search: Ray Tune runs trials of the shared trainer, Optuna (TPE) proposes, ASHA stops early.

This module is the driver: the options, the searcher (which tells the study each trial's best epoch), the
scheduler (ASHA that never stops the baseline trial), and `run_search`, which starts Ray (`sweeper.search.ray_local`),
puts the cached arrays into the object store once and runs `sweeper.search.trial.trial_main` as the trainable. What
each trial and the tables write into the run folder is `sweeper.rundir.layout`'s; the live lines are
`sweeper.search.progress`'s; `sweeper confirm` is `sweeper.search.confirm`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from sweeper.data.cache import drop_resident_pages
from sweeper.data.tokens import TrainData
from sweeper.errors import SweeperError
from sweeper.rundir.layout import EXPERIMENT_DIR, STUDY_FILE, TRIAL_KEY
from sweeper.rundir.records import is_baseline, merged_epochs, trial_groups, write_trial_end
from sweeper.search.options import SearchMethod, SearchOptions
from sweeper.search.progress import ProgressPrinter, trial_error
from sweeper.search.ray_local import disk_full, ray_environment, start_ray
from sweeper.search.recovery import KEPT_MARK, NODE_LOSSES_RETRIED, node_loss_callback
from sweeper.search.relocate import (attach_study, portable_state, read_searcher_state, restorable,
                                     search_generator, write_searcher_state)
from sweeper.search.space import SearchSpace
from sweeper.search.study_db import (defer_tell, is_locked, locked_error, open_storage, settle, stop_sweep,
                                     tell_deferred)
from sweeper.search.tables import write_tables
from sweeper.search.trial import trial_arrays, trial_bytes, trial_main
from sweeper.training.config import TrainConfig
from sweeper.training.objective import best_index

log = logging.getLogger(__name__)


def end_recorder():
    """A Ray Tune Callback writing each ended trial's TRIAL_END into its folder."""
    from ray.tune import Callback

    class _End(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            write_trial_end(Path(trial.path), "TERMINATED")

        def on_trial_error(self, iteration, trials, trial, **info):
            error = trial_error(trial)
            if KEPT_MARK in error:  # a resume left it as it ended: its record stays as it was
                return
            write_trial_end(Path(trial.path), "ERROR", error,
                            node_lost=bool(getattr(trial.temporary_state, "node_lost", False)))

    return _End()


ASHA_TESTED_RAY = "2.60"  # the Ray release whose ASHA internals the baseline exemption was tested with


def check_asha_internals(scheduler) -> None:
    """Refuse to run when Ray's ASHA no longer keeps the private bookkeeping the baseline exemption edits
    (`_num_stopped`, and per bracket `_rungs` as (milestone, {trial id: score})): one line, not a silent
    miscount or a crash mid-sweep."""
    import ray

    brackets = getattr(scheduler, "_brackets", None)
    rungs = [getattr(b, "_rungs", None) for b in brackets] if isinstance(brackets, list) and brackets else [None]
    ok = (isinstance(getattr(scheduler, "_num_stopped", None), int)
          and all(isinstance(r, list) and r and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], dict)
                                                    for x in r) for r in rungs))
    if not ok:
        raise SweeperError(f"ray {ray.__version__}: AsyncHyperBandScheduler's internals (_num_stopped, rungs) "
                           f"are not those of ray {ASHA_TESTED_RAY}, which sweeper.search.driver's baseline "
                           f"exemption was tested with: install ray {ASHA_TESTED_RAY}.x or update make_scheduler")


def make_scheduler(space: SearchSpace):
    """ASHA on the epoch counter, except that the baseline trial always runs its full length."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    baseline = space.baseline_point()

    def planned_epochs(config: dict[str, Any]) -> int:
        return space.to_config({k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__}).epochs

    class BaselineKeepingASHA(AsyncHyperBandScheduler):
        """ASHA that still records the baseline's results at each rung but never stops it:
        the sweep's own phase-1 reference must be complete to compare against."""

        def on_trial_result(self, tune_controller, trial, result):
            # Ray (2.60) has no public way to exempt a trial: let ASHA record the result at its rung (so the
            # others are still compared with the baseline), then overrule a stop before the baseline's last
            # epoch and take it back out of ASHA's stop count (which only its debug_string reports).
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and is_baseline(trial.config, baseline):
                if result.get("epoch", 0) < planned_epochs(trial.config):
                    self._num_stopped -= 1
                    return TrialScheduler.CONTINUE
            return action

    scheduler = BaselineKeepingASHA(time_attr="epoch", metric=space.metric, mode=space.mode,
                                    max_t=space.asha.max_epochs, grace_period=space.asha.grace_period,
                                    reduction_factor=space.asha.reduction_factor)
    check_asha_internals(scheduler)
    return scheduler


@contextlib.contextmanager
def optuna_experimental_ok() -> Iterator[None]:
    """Optuna's ExperimentalWarning silenced inside the block only (TPE's multivariate/group, metric names:
    features this project relies on, pinned by its tests); nothing process-wide."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def make_searcher(space: SearchSpace, *, study_path: Path, study_name: str, seed: int,
                  exp_dir: Path | None = None, max_concurrent: int = 1, restore_dir: Path | None = None,
                  method: SearchMethod = SearchMethod()):
    """Seeded TPE over the space, trial 0 the phase-1 point, study in SQLite; the study sees what the report ranks.
    (`method` may ask for random sampling or no phase-1 trial instead: `make_sampler`.)

    Ray's OptunaSearch tells the study a trial's *last* value and marks a trial that ASHA stopped COMPLETE
    with that partial score. Here every epoch is an intermediate value (step = epoch, the stopping epoch
    included), a trial that ran all its epochs is COMPLETE with `best_<metric>` (its best epoch: the
    number trials.csv and the report rank by), and a trial stopped early is PRUNED, as TPE and
    optuna-dashboard expect (Optuna then gives it its last intermediate value).

    Each config carries its study number (TRIAL_KEY): the tables number trials as the study does. A study
    entry left RUNNING by a killed driver whose Ray trial its last snapshot did not know is handed to the
    next new Ray trial (same number and params, its epochs under `exp_dir` told to the study), so a resume
    continues that trial instead of adding one beyond the budget.

    With trials running at once (`max_concurrent` > 1), TPE's constant liar counts each running trial as a
    poor result, so concurrent suggestions spread out instead of landing on the same spot.

    With `restore_dir` (a resume) the searcher is the one saved there, its study the one in `study_path`: every
    path comes from the folder being resumed, never from what the pickles recorded where the sweep ran before.
    """

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    objective = space.objective.column

    class BestEpochOptunaSearch(OptunaSearch):
        """OptunaSearch telling the study each trial's best epoch, its learning curve, and ASHA's stops."""

        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            with optuna_experimental_ok():
                self._ot_study.set_metric_names([objective])  # optuna-dashboard: not "Objective 0"
            self._planned: dict[str, int] = {}  # trial id -> epochs it was configured for
            self._values: dict[str, dict[int, float]] = {}  # trial id -> {epoch: value} told to the study

        # Ray pickles the searcher (tuner.pkl, searcher-state-*.pkl). The study's storage is left out of both:
        # it names the study.db of the folder the sweep ran in, and a moved or copied folder must resume
        # with its own. `restore` attaches the study.db beside the experiment folder it is restored from.
        def __getstate__(self) -> dict[str, Any]:
            return portable_state(self)

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            self._ot_study, self._storage, self._ot_trials = None, None, {}

        def save(self, checkpoint_path: str) -> None:
            write_searcher_state(checkpoint_path, portable_state(self))

        def restore(self, checkpoint_path: str) -> None:
            previous = getattr(self, "_storage", None)  # Ray restores twice: the first study's connections close
            self.__setstate__(read_searcher_state(checkpoint_path))
            attach_study(self, study_path, previous=previous)
            tell_deferred(self)

        def suggest(self, trial_id: str):
            if trial_id not in self._ot_trials:
                self._adopt_orphan(trial_id)
            config = super().suggest(trial_id)
            if isinstance(config, dict):
                self._planned[trial_id] = space.to_config(config).epochs
                config = {**config, TRIAL_KEY: self._ot_trials[trial_id].number}
            return config

        def _adopt_orphan(self, trial_id: str) -> None:
            """Give `trial_id` the lowest study entry still RUNNING that no Ray trial holds, if any."""
            held = {t.number for t in self._ot_trials.values()}
            running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            orphans = sorted((t for t in running if t.number not in held), key=lambda t: t.number)
            if not orphans:
                return
            frozen = orphans[0]
            ot_trial = optuna.Trial(self._ot_study, frozen._trial_id)
            self._ot_trials[trial_id] = ot_trial
            seen = self._values.setdefault(trial_id, {int(k): float(v) for k, v in frozen.intermediate_values.items()})
            # epochs the trial recorded that the killed driver never told the study
            groups = trial_groups(exp_dir) if exp_dir is not None and Path(exp_dir).is_dir() else {}
            for r in merged_epochs(groups.get(frozen.number, [])):
                value = r.get(space.metric)
                if value is not None and int(r["epoch"]) not in seen:
                    seen[int(r["epoch"])] = float(value)
                    ot_trial.report(float(value), int(r["epoch"]))
            log.info("study trial %d (left running by an interrupted driver) continues as Ray trial %s",
                     frozen.number, trial_id)

        def _record(self, trial_id: str, result: dict[str, Any]) -> None:
            step = int(result.get("epoch", result.get("training_iteration", 0)))
            value = result.get(space.metric)
            seen = self._values.setdefault(trial_id, {})
            if value is None or step in seen:  # an epoch re-run after a resume is already in the study
                return
            seen[step] = float(value)
            try:
                self._ot_trials[trial_id].report(float(value), step)
            except Exception as e:  # study.db locked past its busy timeout: this epoch's value stays out
                if not is_locked(e):
                    raise
                stop_sweep(self)

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if trial_id in self._completed_trials:
                return
            self._record(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            state, value = optuna.trial.TrialState.FAIL, None
            if result and not error:
                self._record(trial_id, result)  # ASHA's stopping epoch reaches only this call
                planned = self._planned.get(trial_id)
                if planned is not None and int(result.get("epoch", 0)) < planned:
                    state = optuna.trial.TrialState.PRUNED
                else:
                    # the trial's own best over its whole history (resumes included); else the epochs seen here
                    seen = self._values.get(trial_id, {})
                    best = best_index(list(seen.values()), mode=space.mode)
                    value = result.get(objective, None if best is None else list(seen.values())[best])
                    if value is not None:
                        state, value = optuna.trial.TrialState.COMPLETE, float(value)
            elif not error:  # removed before it ran (a sweep ended with it pending)
                state = optuna.trial.TrialState.PRUNED
            try:
                self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
            except (ValueError, RuntimeError) as e:  # e.g. a NaN best value: Optuna fails the trial itself
                log.warning("study: trial %s: %s", trial_id, e)
            except Exception as e:  # study.db locked past its busy timeout: told on the resume (study_db)
                if not is_locked(e):
                    raise
                defer_tell(self, self._ot_trials[trial_id].number, value, state)
            self._completed_trials.add(trial_id)
            self._values.pop(trial_id, None)

    sampler = make_sampler(space, seed=seed, max_concurrent=max_concurrent, kind=method.sampler)
    if restore_dir is not None:  # resume: the searcher's state from the folder, its study from study_path
        searcher = BestEpochOptunaSearch.__new__(BestEpochOptunaSearch)
        searcher.restore_from_dir(str(restore_dir))
        return searcher
    storage = open_storage(study_path)  # WAL, and a busy timeout: readers never stop the sweep
    # a study already there (a sweep stopped before Ray saved its state) holds its baseline trial already
    started = study_name in optuna.get_all_study_names(storage)
    first = [] if started or not method.baseline_trial else [space.baseline_point()]
    return BestEpochOptunaSearch(space=space.suggest, metric=space.metric, mode=space.mode, sampler=sampler,
                                 points_to_evaluate=first, study_name=study_name, storage=storage)


def make_sampler(space: SearchSpace, *, seed: int, max_concurrent: int = 1, kind: str = "tpe"):
    """The study's seeded sampler: sweeper's TPE, or plain random sampling ('random', to measure TPE against)."""
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with optuna_experimental_ok():  # multivariate and group
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=max(2, min(10, space.trials // 3)),  # small sweeps: let TPE model early
            multivariate=True, group=True,  # the space is conditional (momentum only for sgd, ...)
            constant_liar=max_concurrent > 1,  # suggestions made while others run know they run
        )


def make_trainable(data: TrainData, opts: SearchOptions):
    """`trial_main` with the cached arrays put into the object store once, and the trial's resources.

    The driver then lets go of its own mapped copy of the tokens: the object store holds the one copy.
    """
    from ray import tune

    arrays = trial_arrays(data)
    trainable = tune.with_parameters(trial_main, arrays=arrays)
    for name in ("train_tokens", "val_tokens", "train_tokens_flip"):
        if name in arrays:
            drop_resident_pages(arrays[name])
    return tune.with_resources(trainable, {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})


def run_search(space: SearchSpace, data: TrainData, opts: SearchOptions, *,
               trial_overrides: dict[str, Any] | None = None,
               progress: bool = True, method: SearchMethod = SearchMethod(), stop=None) -> pd.DataFrame:
    """Run (or resume) a sweep into opts.run_dir and return the trials table.

    `method` chooses the sampler, early stopping and the phase-1 trial of a new sweep (sweeper's by default);
    `stop` is a Ray Tune stopper (e.g. a budget of epochs), passed to Ray as it is."""
    ray_environment()
    from ray import tune

    run_dir = opts.run_dir.resolve()
    exp_dir = run_dir / EXPERIMENT_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    start_ray(opts, data_bytes=trial_bytes(data))
    trainable = make_trainable(data, opts)
    printer = ProgressPrinter(space, total=opts.trials)
    run_config = tune.RunConfig(
        name=EXPERIMENT_DIR, storage_path=str(run_dir), verbose=0,
        callbacks=[node_loss_callback(trial_error), end_recorder(), *([printer.callback()] if progress else [])],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest epoch: enough to resume
        # a trial whose node is lost continues from its checkpoint elsewhere; one that fails for its own reasons
        # is recorded and not retried (sweeper.search.recovery); the sweep goes on either way
        failure_config=tune.FailureConfig(max_failures=NODE_LOSSES_RETRIED, fail_fast=False),
        stop=stop,
    )
    with optuna_experimental_ok():  # the searcher is built, or restored, and used inside
        return _fit(run_dir, exp_dir, space, opts, trainable, run_config, trial_overrides, method)


def _fit(run_dir: Path, exp_dir: Path, space: SearchSpace, opts: SearchOptions, trainable,
         run_config, trial_overrides: dict[str, Any] | None, method: SearchMethod) -> pd.DataFrame:
    """`run_search`'s Tuner, new or restored, run to its end; a full disk or a study database locked past its
    busy timeout is one line."""
    study = run_dir / STUDY_FILE
    resume = f"sweeper search --resume --name {opts.name} --out {opts.out_root}"
    searcher = None
    try:
        tuner, searcher = _tuner(run_dir, exp_dir, space, opts, trainable, run_config, trial_overrides, method)
        tuner.fit()
        if getattr(searcher, "study_locked", False):  # stopped as Ctrl-C stops it, its state saved
            raise locked_error(study, resume)
    except Exception as e:  # Ray raises what a trial or the searcher raised, wrapped in its own errors
        if is_locked(e) or isinstance(e, SweeperError):
            raise (e if isinstance(e, SweeperError) else locked_error(study, resume)) from None
        reason = disk_full(e)
        if reason is None:
            raise
        raise SweeperError(f"{run_dir}: the disk is full ({reason}); the sweep stopped with its finished trials "
                           f"kept: free some space and continue with: {resume}") from None
    finally:
        settle(getattr(searcher, "_storage", None), study)
    return write_tables(run_dir, space)


def _tuner(run_dir: Path, exp_dir: Path, space: SearchSpace, opts: SearchOptions, trainable,
           run_config, trial_overrides: dict[str, Any] | None, method: SearchMethod):
    """The sweep's Tuner, new or restored from `exp_dir`, and its searcher."""
    from ray import tune

    if opts.resume and restorable(exp_dir):
        # Ray moves its own trial paths to where the folder is now (Tuner.restore of the experiment folder);
        # the searcher it would restore from tuner.pkl is the one the sweep started with, so it is replaced
        # by one restored from this folder with this folder's study.db (Ray's restore_from_dir then repeats
        # the restore on it: the same state). Ray 2.60 offers no public setter for it.
        # errored trials too: one its lost node ended continues, one its own error ended stays as it was
        # (sweeper.search.recovery.kept_error)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=None)
        searcher = make_searcher(space, study_path=run_dir / STUDY_FILE, study_name=opts.name, seed=opts.seed,
                                 exp_dir=exp_dir, restore_dir=exp_dir)
        restored = tuner._local_tuner._tune_config
        restored.search_alg = search_generator(searcher, max_concurrent=opts.max_concurrent, run_dir=run_dir)
        restored.max_concurrent_trials = None  # the limiter above holds it (Ray refuses both)
    else:
        # No device here: each trial decides from the GPUs Ray grants it (sweeper.training.device.trial_device).
        constants = {"threads": max(1, int(opts.cpus_per_trial)), **space.objective.trial_keys(),
                     **(trial_overrides or {})}
        searcher = make_searcher(space, study_path=run_dir / STUDY_FILE, study_name=opts.name, seed=opts.seed,
                                 exp_dir=exp_dir, max_concurrent=opts.max_concurrent, method=method)
        tuner = tune.Tuner(
            trainable, param_space=constants, run_config=run_config,
            tune_config=tune.TuneConfig(search_alg=search_generator(searcher, max_concurrent=opts.max_concurrent,
                                                                           run_dir=run_dir),
                                        scheduler=make_scheduler(space) if method.early_stopping else None,
                                        num_samples=opts.trials,
                                        reuse_actors=True),
        )
    return tuner, searcher
