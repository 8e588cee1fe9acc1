"""Phase-2 search: Ray Tune runs trials of the shared trainer, Optuna (TPE) proposes, ASHA stops early.

The trainable is a thin adapter around `sweeper.train.train`: it rebuilds the
train data from arrays that the driver put into Ray's object store once
(every trial on a node maps the same shared memory, nothing is recomputed),
and reports every epoch with a checkpoint so an interrupted sweep resumes.

Run folder (`results/<name>/`):
    sweep.json     what was run: options, space, data and backbone, versions
    space.yaml     the search space file as used (a resumed sweep reads this copy)
    study.db       the Optuna study (SQLite): `optuna-dashboard sqlite:///.../study.db`
    ray/           Ray Tune's experiment folder (trial dirs, checkpoints, state); each trial dir also holds
                   the project's own record of it (TRIAL_CONFIG, TRIAL_EPOCHS, TRIAL_END), all that the
                   tables, confirm and evaluate read: Ray's state is pickled, and only --resume loads it
    trials.csv     one row per trial; history.csv one row per trial and epoch
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from sweeper.config import PUBLISHED_BASELINE_IOU, TrainConfig
from sweeper.device import gpu_count, release_memory, trial_device
from sweeper.errors import SweeperError, is_out_of_memory
from sweeper.features import drop_resident_pages
from sweeper.tokens import TrainData
from sweeper.files import append_jsonl, write_text_atomic
from sweeper.results import (BEST_KEY, CONFIRM_CSV, CONFIRM_DIR, CONFIRM_KEY, CONFIRM_SUMMARY_CSV, EXPERIMENT_DIR,
                             STATE_FILE, STUDY_FILE, TRIAL_CONFIG, TRIAL_EPOCHS, TRIAL_KEY, TRIALS_CSV, best_index,
                             best_value, is_baseline, merged_epochs, read_epochs, trial_configs, trial_groups,
                             write_tables, write_trial_end, write_trial_start)
from sweeper.space import SearchSpace
from sweeper.train import load_checkpoint, train

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- trial side


def memory_mb() -> dict[str, float]:
    """This process's private and shared resident memory (MB), and its peak RSS."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        fields = {}
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":", 1)
            fields[key] = float(value.split()[0]) / 1024
        out["private_mb"] = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        out["shared_mb"] = fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0)
    except (OSError, ValueError):  # not Linux: peak RSS only
        pass
    return out


def epoch_metrics(record: dict[str, Any], class_names: tuple[str, ...]) -> dict[str, Any]:
    """An epoch record as Tune metrics: scalars as they are, per-class IoU as a name -> value dict."""
    out = {k: v for k, v in record.items() if not isinstance(v, list)}
    for split in ("train", "val"):
        values = record.get(f"{split}_class_iou")
        if values is not None:
            out[f"{split}_class_iou"] = {n: (math.nan if v is None else v) for n, v in zip(class_names, values)}
    return out


def trial_main(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Ray Tune function trainable: one call of the shared `train` with per-epoch reports.

    The device comes from what Ray granted this trial (its GPU ids and GPU share), not from the driver.
    """
    import ray
    from ray import tune

    # Read by Ray in this process when it reuses it for the next trial: a trial ASHA stopped still releases
    # its memory (run_trial's finally), and Ray's default 2 s wait fails the reuse on a loaded machine.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    context = ray.get_runtime_context()
    gpu_ids = ray.get_gpu_ids()  # the GPU(s) Ray granted this trial a share of
    share = float(context.get_assigned_resources().get("GPU", 0.0))
    node_id = context.get_node_id()  # which machine of a cluster ran it
    data = TrainData.from_arrays(**arrays)  # zero-copy views of the object store's shared memory
    if isinstance(config.get("run"), dict):  # a confirm run: one grid point per (config, seed)
        config = config["run"]
    folder = Path(tune.get_context().get_storage().trial_fs_path)  # this trial's folder under ray/ (storage)
    write_trial_start(folder, config, trial_id=tune.get_context().get_trial_id())
    number = config.get(TRIAL_KEY)  # the study's number; none in a confirm run
    # confirm runs tag their source trial; sweep trials carry their study number
    config = {k: v for k, v in config.items() if k not in (CONFIRM_KEY, TRIAL_KEY)}
    cfg = TrainConfig.from_dict(config, source="trial config")
    cfg = cfg.replace(device=trial_device(cfg.device, gpu_ids), gpu_share=min(1.0, share) if share > 0 else 1.0)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(Path(d) / STATE_FILE)
    elif isinstance(number, int):
        # Ray knows no checkpoint of this trial, but one can be on disk: the driver was killed after the trial
        # checkpointed and before Ray's next experiment snapshot (the searcher then hands the study's
        # number to a new Ray trial, or Ray restarts the trial from its snapshot).
        state_file = continued_state(folder.parent, number)
        if state_file is not None:
            resume = load_checkpoint(state_file)
            log.info("trial %d continues from %s (epoch %d)", number, state_file, len(resume.get("history", [])))
    extra = {"gpu_ids": ",".join(str(i) for i in gpu_ids), "gpu_share": share, "node_id": node_id}

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        # written before the checkpoint: every checkpointed epoch has its line
        append_jsonl(folder / TRIAL_EPOCHS, {**metrics, **extra})
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(d))

    if cfg.threads:  # this trial process's torch threads: set here, `train` changes no global state
        torch.set_num_threads(cfg.threads)
    run_trial(cfg, data, report=report, resume=resume)


def run_trial(cfg: TrainConfig, data: TrainData, *, report: Callable[[dict[str, Any], dict[str, Any]], None],
              resume: dict[str, Any] | None = None) -> None:
    """Train one trial, handing `report` each epoch's metrics and checkpoint state.

    ASHA stops a trial by raising inside `report` (Ray's `tune.report`): the trial's memory is
    released however it ends.
    """
    peak = {"private_mb": 0.0, "shared_mb": 0.0}
    # The best epoch's head rides in every checkpoint beside the latest state (that one is for resume):
    # the report ranks a trial by its best epoch, so `evaluate` scores that epoch's head.
    best: dict[str, Any] | None = (resume or {}).get(BEST_KEY)

    def on_epoch(record: dict[str, Any], run) -> None:
        nonlocal best
        mem = memory_mb()
        for k in peak:
            peak[k] = max(peak[k], mem.get(k, 0.0))
        metrics = epoch_metrics(record, data.class_names)
        state = run.state_dict()
        i = best_index([r["val_iou"] for r in run.history])
        if i == len(run.history) - 1 and (best is None or best["epoch"] != record["epoch"]):  # a new best
            best = {"epoch": int(record["epoch"]), "val_iou": float(record["val_iou"]), "head": state["head"]}
        metrics.update({"peak_rss_mb": mem["peak_rss_mb"], "peak_private_mb": peak["private_mb"],
                        "peak_shared_mb": peak["shared_mb"],
                        "best_val_iou": run.history[i]["val_iou"] if i is not None else math.nan,
                        "best_epoch": run.history[i]["epoch"] if i is not None else None})
        report(metrics, {**state, BEST_KEY: best} if best is not None else state)

    try:
        train(cfg, data, on_epoch=on_epoch, resume=resume)
    finally:
        release_memory()


# --------------------------------------------------------------------------- trial records


def continued_state(exp_dir: Path, number: int) -> Path | None:
    """The checkpoint a restarted trial `number` continues from: the one with most epochs in its folders."""
    best: tuple[int, Path] | None = None
    for rec in trial_groups(exp_dir).get(number, []):
        state = rec.checkpoint()
        if state is None:
            continue
        try:
            epochs = len(load_checkpoint(state).get("history") or [])
        except (OSError, RuntimeError, EOFError) as e:  # a checkpoint torn by the kill: the others may do
            log.warning("%s: not readable (%s): not continued from", state, str(e).splitlines()[0])
            continue
        if best is None or epochs >= best[0]:
            best = (epochs, state)
    return None if best is None else best[1]


# --------------------------------------------------------------------------- driver side


def trial_index(trial) -> int:
    """A Ray trial's number: the study's (TRIAL_KEY in its config), else its 0-based creation order (its
    experiment tag starts with a 1-based counter, '3_lr=...')."""
    number = (getattr(trial, "config", None) or {}).get(TRIAL_KEY)
    if isinstance(number, int):
        return number
    m = re.match(r"(\d+)", str(getattr(trial, "experiment_tag", "") or ""))
    return int(m.group(1)) - 1 if m else -1


def end_recorder():
    """A Ray Tune Callback writing each ended trial's TRIAL_END into its folder."""
    from ray.tune import Callback

    class _End(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            write_trial_end(Path(trial.path), "TERMINATED")

        def on_trial_error(self, iteration, trials, trial, **info):
            write_trial_end(Path(trial.path), "ERROR", _trial_error(trial))

    return _End()


def check_trusted(run_dir: Path) -> None:
    """Refuse to resume from a run folder that another user owns or can write: resuming unpickles Ray's state
    there, so it trusts the folder as much as running its code."""
    uid = os.getuid()
    exp_dir = Path(run_dir) / EXPERIMENT_DIR
    for path in (Path(run_dir), exp_dir, *sorted(exp_dir.iterdir() if exp_dir.is_dir() else [])):
        st = path.lstat()
        if st.st_uid != uid:
            raise SweeperError(f"{path}: owned by another user (uid {st.st_uid}); --resume loads Ray's pickled "
                               f"state from here, which runs code: resume only your own run folders")
        if st.st_mode & 0o002:
            raise SweeperError(f"{path}: writable by other users (mode {st.st_mode & 0o777:o}); --resume loads "
                               f"Ray's pickled state from here, which runs code: chmod o-w it first if you trust it")


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

    return BaselineKeepingASHA(time_attr="epoch", metric=space.metric, mode=space.mode,
                               max_t=space.asha.max_epochs, grace_period=space.asha.grace_period,
                               reduction_factor=space.asha.reduction_factor)


def make_searcher(space: SearchSpace, *, study_path: Path, study_name: str, seed: int,
                  exp_dir: Path | None = None):
    """Seeded TPE over the space, trial 0 the phase-1 point, study in SQLite; the study sees what the report ranks.

    Ray's OptunaSearch tells the study a trial's *last* value and marks a trial that ASHA stopped COMPLETE
    with that partial score. Here every epoch is an intermediate value (step = epoch, the stopping epoch
    included), a trial that ran all its epochs is COMPLETE with `best_<metric>` (its best epoch: the
    number trials.csv and the report rank by), and a trial stopped early is PRUNED, as TPE and
    optuna-dashboard expect (Optuna then gives it its last intermediate value).

    Each config carries its study number (TRIAL_KEY): the tables number trials as the study does. A study
    entry left RUNNING by a killed driver whose Ray trial its last snapshot did not know is handed to the
    next new Ray trial (same number and params, its epochs under `exp_dir` told to the study), so a resume
    continues that trial instead of adding one beyond the budget.
    """
    import warnings

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say what happens
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate/group
    objective = f"best_{space.metric}"

    class BestEpochOptunaSearch(OptunaSearch):
        """OptunaSearch telling the study each trial's best epoch, its learning curve, and ASHA's stops."""

        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self._ot_study.set_metric_names([objective])  # optuna-dashboard: not "Objective 0"
            self._planned: dict[str, int] = {}  # trial id -> epochs it was configured for
            self._values: dict[str, dict[int, float]] = {}  # trial id -> {epoch: value} told to the study

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
            self._ot_trials[trial_id].report(float(value), step)

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
            self._completed_trials.add(trial_id)
            self._values.pop(trial_id, None)

    sampler = optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=max(2, min(10, space.trials // 3)),  # small sweeps: let TPE model early
        multivariate=True, group=True,  # the space is conditional (momentum only for sgd, ...)
    )
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_path}")
    return BestEpochOptunaSearch(space=space.suggest, metric=space.metric, mode=space.mode, sampler=sampler,
                                 points_to_evaluate=[space.baseline_point()], study_name=study_name,
                                 storage=storage)


class ProgressPrinter:
    """Live progress on stderr: one line per finished epoch and per trial end, with counts and best."""

    def __init__(self, space: SearchSpace, stream=sys.stderr, *, total: int | None = None) -> None:
        self.space, self.stream = space, stream
        self.total = total or space.trials  # the sweep's budget (--trials overrides the space's)
        self.baseline = space.baseline_point()
        self.best: tuple[float, int] | None = None  # (score, trial) of the best epoch seen in any trial
        self.baseline_score: float | None = None  # the baseline trial's best epoch so far
        self.oom: set[str] = set()  # trial ids that failed for lack of GPU memory: counted apart
        self.started = time.perf_counter()

    def callback(self):
        """A Ray Tune Callback that forwards events to this printer."""
        from ray.tune import Callback

        printer = self

        class _Cb(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                printer.on_result(trials, trial, result)

            def on_trial_complete(self, iteration, trials, trial, **info):
                printer.on_end(trials, trial, "done")

            def on_trial_error(self, iteration, trials, trial, **info):
                printer.on_end(trials, trial, "FAILED")

        return _Cb()

    def _counts(self, trials, ending=None) -> str:
        # Callbacks run before Ray updates the ending trial's status: count it as finished here.
        status = [("TERMINATED" if t is ending else t.status) for t in trials]
        stopped = sum(1 for t, s in zip(trials, status) if s == "TERMINATED" and self._stopped_early(t))
        return (f"running {status.count('RUNNING')} | done {status.count('TERMINATED') - stopped} | "
                f"stopped early {stopped} | failed {status.count('ERROR')}"
                f"{f' ({len(self.oom)} out of GPU memory)' if self.oom else ''} | of {self.total}")

    @staticmethod
    def _stopped_early(trial) -> bool:
        last = trial.last_result or {}
        return last.get("epoch", 0) < trial.config.get("epochs", 0)

    def _best(self) -> str:
        parts = []
        if self.best:
            parts.append(f"best {self.best[0]:.4f} (trial {self.best[1]})")
        if self.baseline_score is not None:
            parts.append(f"baseline trial {self.baseline_score:.4f}")
        parts.append(f"published {PUBLISHED_BASELINE_IOU}")
        return ", ".join(parts)

    def on_result(self, trials, trial, result) -> None:
        idx = trial_index(trial)
        score = result.get(self.space.metric)
        if score is not None and not math.isnan(score):
            # the best so far against this epoch, by the one best-epoch rule (the earlier wins a tie)
            pair = [p for p in (self.best, (score, idx)) if p is not None]
            self.best = pair[best_index([v for v, _ in pair], mode=self.space.mode)]
            if is_baseline(trial.config, self.baseline):
                self.baseline_score = best_value([self.baseline_score, score], mode=self.space.mode)
        self.stream.write(f"[{time.perf_counter() - self.started:6.0f}s] trial {idx:>3} epoch "
                          f"{result.get('epoch')}/{trial.config.get('epochs')}: {self.space.metric} "
                          f"{'-' if score is None else f'{score:.4f}'}  | {self._best()} | {self._counts(trials)}\n")
        self.stream.flush()

    def on_end(self, trials, trial, what: str) -> None:
        idx = trial_index(trial)
        if what == "FAILED":
            error = _trial_error(trial)
            if is_out_of_memory(error):
                self.oom.add(trial.trial_id)
            what = f"FAILED: {error}"
        if what == "done" and self._stopped_early(trial):
            what = f"stopped early by ASHA at epoch {(trial.last_result or {}).get('epoch')}"
        self.stream.write(f"[{time.perf_counter() - self.started:6.0f}s] trial {idx:>3} {what} | "
                          f"{self._counts(trials, ending=trial if not what.startswith('FAILED') else None)}\n")
        self.stream.flush()


def ray_environment() -> None:
    """Settings Ray reads when it is first imported: call before any `import ray` in the process."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # then a local Ray binds 127.0.0.1 only
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then really is quiet; ProgressPrinter reports
    # one checkpoint per epoch forces a state snapshot each time; that is intended (resume), not a problem
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("tensorboardX").setLevel(logging.WARNING)


def object_store_bytes(data_bytes: int, *, memory_bytes: int) -> int:
    """A local Ray's object store size: the sweep's cached arrays plus headroom, at least Ray's default
    (30% of memory), at most 60% of memory (beyond that the arrays spill to disk; see --cache-dtype float16)."""
    want = int(data_bytes * 1.2) + 256 * 2**20
    return min(max(want, int(0.3 * memory_bytes)), int(0.6 * memory_bytes))


def start_ray(opts: SearchOptions, data_bytes: int = 0) -> None:
    """Join --address, or start a local Ray on loopback only (dashboard off unless asked for), its object
    store sized to hold `data_bytes` of cached arrays."""
    ray_environment()
    import ray

    if ray.is_initialized():
        return
    if opts.address:
        ray.init(address=opts.address, logging_level=logging.WARNING, log_to_driver=False)
        return
    num_gpus = gpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    store = object_store_bytes(data_bytes, memory_bytes=memory)
    if data_bytes * 1.2 > store:
        log.warning("the cached arrays (%.2f GB) exceed the object store Ray can have here (%.2f GB): they will "
                    "spill to disk; --cache-dtype float16 halves them", data_bytes / 1e9, store / 1e9)
    # address="local": always a fresh private instance, never a cluster someone else left running here
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=num_gpus, include_dashboard=opts.dashboard,
             object_store_memory=store, logging_level=logging.WARNING, log_to_driver=False)
    from sweeper.reaper import watch_driver

    watch_driver()  # this local Ray's agents would outlive a kill -9 of this process by a minute


def check_dashboard(opts: SearchOptions) -> None:
    """Refuse --dashboard, before any work, where this Ray lacks the dashboard's packages (a plain `ray`
    install, not `ray[default]`): ray.init would fail after the cache is built, with a traceback."""
    if not opts.dashboard or opts.address:
        return
    ray_environment()
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None:
        raise SweeperError(f"--dashboard: this Ray lacks the dashboard's packages ({missing}); install them with "
                           f"pip install 'ray[default]=={_ray_version()}', or run without --dashboard")


def _ray_version() -> str:
    import ray

    return ray.__version__


def _count(n: float, what: str) -> str:
    return f"{n:g} {what}{'' if n == 1 else 's'}"


def missing_resources(cpus: float, gpus: float, nodes: list[dict[str, float]]) -> str | None:
    """Why no node of a cluster can run a trial of `cpus` CPUs and `gpus` GPUs (Ray would wait forever);
    None when one can. `nodes` are Ray resource dicts ({"CPU": 8.0, "GPU": 1.0, ...}), one per live node."""
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return None
    total_cpu, total_gpu = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    enough_gpu = any(n.get("GPU", 0) >= gpus for n in nodes)
    enough_cpu = any(n.get("CPU", 0) >= cpus for n in nodes)
    asked = (f"--gpus-per-trial {gpus:g}" if not enough_gpu else f"--cpus-per-trial {cpus:g}" if not enough_cpu
             else f"--cpus-per-trial {cpus:g} with --gpus-per-trial {gpus:g}")
    has = (f"{_count(total_cpu, 'CPU')} and {'no GPU' if not total_gpu else _count(total_gpu, 'GPU')} in all"
           + (f", largest node: {_count(largest.get('CPU', 0), 'CPU')}, {_count(largest.get('GPU', 0), 'GPU')}"
              if len(nodes) > 1 else ""))
    want = _count(cpus, "CPU") + (f" and {_count(gpus, 'GPU')}" if gpus else "")
    return f"{asked}: no node of the Ray cluster has {want} for one trial (it has {has}); ask for less"


def check_resources(opts: SearchOptions, nodes: list[dict[str, float]] | None = None) -> None:
    """Refuse a per-trial request that no node can grant, in one line, before any trial starts.

    `nodes` defaults to the live nodes of the Ray cluster this process joined.
    """
    if nodes is None:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = missing_resources(opts.cpus_per_trial, opts.gpus_per_trial, nodes)
    if problem:
        raise SweeperError(problem)


def local_nodes() -> list[dict[str, float]]:
    """The resources a local Ray started by `start_ray` will have: this machine's CPUs and GPUs."""
    return [{"CPU": float(os.cpu_count() or 1),
             "GPU": float(gpu_count())}]


def check_address(address: str, timeout: float = 15.0) -> None:
    """Fail in one line when nothing answers at --address; ray.init would retry for ever.

    'auto' (Ray finds a cluster started on this machine) is left to Ray.
    """
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweeperError(f"--address '{address}': expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise SweeperError(f"--address {address}: no Ray cluster answers there ({reason} within {timeout:g} s); "
                           f"start one with `ray start --head` or check the address") from None


def trial_arrays(data: TrainData) -> dict[str, np.ndarray]:
    """What every trial receives through the object store: cached tokens and labels, and the class
    pixel counts computed once here (not in every trial: that pass peaks at 8 bytes per label byte)."""
    return {"train_tokens": np.asarray(data.train.tokens.array), "train_labels": data.train.labels,
            "val_tokens": np.asarray(data.val.tokens.array), "val_labels": data.val.labels,
            "train_counts": np.asarray(data.train_pixel_counts())}


def trial_bytes(data: TrainData) -> int:
    """Bytes of everything `trial_arrays` puts into the object store (what it must hold)."""
    return sum(a.nbytes for a in trial_arrays(data).values())


def make_trainable(data: TrainData, opts: SearchOptions):
    """`trial_main` with the cached arrays put into the object store once, and the trial's resources.

    The driver then lets go of its own mapped copy of the tokens: the object store holds the one copy.
    """
    from ray import tune

    arrays = trial_arrays(data)
    trainable = tune.with_parameters(trial_main, arrays=arrays)
    for name in ("train_tokens", "val_tokens"):
        drop_resident_pages(arrays[name])
    return tune.with_resources(trainable, {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})


def run_search(space: SearchSpace, data: TrainData, opts: SearchOptions, *,
               trial_overrides: dict[str, Any] | None = None,
               progress: bool = True) -> pd.DataFrame:
    """Run (or resume) a sweep into opts.run_dir and return the trials table."""
    ray_environment()
    from ray import tune

    run_dir = opts.run_dir.resolve()
    exp_dir = run_dir / EXPERIMENT_DIR
    if opts.resume and run_dir.is_dir():
        check_trusted(run_dir)  # Tuner.restore unpickles ray/: code as much as data
    run_dir.mkdir(parents=True, exist_ok=True)
    start_ray(opts, data_bytes=trial_bytes(data))
    trainable = make_trainable(data, opts)
    printer = ProgressPrinter(space, total=opts.trials)
    run_config = tune.RunConfig(
        name=EXPERIMENT_DIR, storage_path=str(run_dir), verbose=0,
        callbacks=[end_recorder(), *([printer.callback()] if progress else [])],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest epoch: enough to resume
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),  # a failing trial is recorded, the sweep goes on
    )
    if opts.resume and tune.Tuner.can_restore(str(exp_dir)):
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, param_space=None)
    else:
        # No device here: each trial decides from the GPUs Ray grants it (sweeper.device.trial_device).
        constants = {"threads": max(1, int(opts.cpus_per_trial)), **(trial_overrides or {})}
        searcher = make_searcher(space, study_path=run_dir / STUDY_FILE, study_name=opts.name, seed=opts.seed,
                                 exp_dir=exp_dir)
        tuner = tune.Tuner(
            trainable, param_space=constants, run_config=run_config,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(space),
                                        num_samples=opts.trials, max_concurrent_trials=opts.max_concurrent,
                                        reuse_actors=True),
        )
    try:
        tuner.fit()
    except Exception as e:  # Ray raises what a trial or the searcher raised, wrapped in its own errors
        reason = disk_full(e)
        if reason is None:
            raise
        raise SweeperError(f"{run_dir}: the disk is full ({reason}); the sweep stopped with its finished trials "
                           f"kept: free some space and continue with: sweeper search --resume --name {opts.name} "
                           f"--out {opts.out_root}") from None
    return write_tables(run_dir, space)


def disk_full(error: BaseException) -> str | None:
    """Why `error` (or an error it was raised from) is a full disk, in a few words; None when it is not one.

    Ray passes a trial's OSError on as text inside RayTaskError/TuneError, and SQLite (the study) raises its own
    OperationalError, so the messages are read as well as the errno."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(e.errno)
        text = str(e)
        for marker in ("No space left on device", "database or disk is full", "Disk quota exceeded"):
            if marker in text:
                return marker
        e = e.__cause__ or e.__context__
    return None


# --------------------------------------------------------------------------- results


def _trial_error(trial) -> str:
    """The first line of a failed trial's error, from its error file."""
    # Ray writes it on the driver (error_file) and copies it into the trial folder (path) later
    found = [p for p in (getattr(trial, "error_file", None), Path(trial.path or "") / "error.txt")
             if p and Path(p).is_file()]
    if found:
        path = Path(found[0])
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        # Ray's error text ends with the exception line; keep the last one that names an error.
        for ln in reversed(lines):
            if "Error" in ln or "Exception" in ln:
                return ln.strip()[:300]
        return lines[-1][:300] if lines else "error"
    return str(getattr(trial, "error_msg", None) or "error")


# --------------------------------------------------------------------------- confirm


def pick_for_confirm(trials: pd.DataFrame, space: SearchSpace, top: int) -> list[int]:
    """The baseline trial plus the top-K finished trials by the space's metric."""
    best_col = f"best_{space.metric}"
    done = trials[(trials.status == "TERMINATED") & trials[best_col].notna()]
    base = done[done.baseline].trial.tolist()[:1]
    if not base:
        raise SweeperError("the sweep has no finished baseline trial (trial 0) to compare against")
    others = done[~done.baseline].sort_values(best_col, ascending=space.mode == "min").trial.tolist()[:top]
    return base + others


def summarise_confirm(runs: pd.DataFrame, baseline_trial: int, metric: str = "best_val_iou") -> pd.DataFrame:
    """Per config: mean, std, min, max over seeds; gain over the baseline's mean; whether it beats the noise.

    A gain counts as real when it is larger than twice the larger of the two seed-to-seed standard deviations.
    """
    g = runs.groupby("trial")[metric]
    out = pd.DataFrame({"seeds": g.size(), "mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "min": g.min(),
                        "max": g.max()}).reset_index()
    base = out[out.trial == baseline_trial].iloc[0]
    out["baseline"] = out.trial == baseline_trial
    out["gain_vs_baseline"] = out["mean"] - base["mean"]
    out["noise"] = np.maximum(out["std"], base["std"])
    out["gain_exceeds_spread"] = (out.gain_vs_baseline > 2 * out.noise) & ~out.baseline
    return out


def run_confirm(run_dir: Path, space: SearchSpace, data: TrainData, opts: SearchOptions, *, top: int,
                seeds: int, progress: bool = True) -> pd.DataFrame:
    """Re-train the baseline and the top-K configs with `seeds` seeds each, as Ray trials (no early stopping)."""
    ray_environment()
    from ray import tune

    run_dir = Path(run_dir).resolve()
    trials_path = run_dir / TRIALS_CSV
    if not trials_path.is_file():
        raise SweeperError(f"{run_dir}: no {TRIALS_CSV}; run or resume the sweep first")
    picks = pick_for_confirm(pd.read_csv(trials_path), space, top)
    configs = trial_configs(run_dir)
    missing = [t for t in picks if t not in configs]
    if missing:
        raise SweeperError(f"{run_dir / EXPERIMENT_DIR}: no {TRIAL_CONFIG} for trial(s) "
                           f"{', '.join(map(str, missing))}: their configs are unknown")
    grid = [{**configs[t], "seed": s, CONFIRM_KEY: t} for t in picks for s in range(seeds)]
    start_ray(opts, data_bytes=trial_bytes(data))
    trainable = make_trainable(data, opts)
    shutil.rmtree(run_dir / CONFIRM_DIR, ignore_errors=True)  # a confirm is re-run whole, never mixed with an old one
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(max_concurrent_trials=opts.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=CONFIRM_DIR, storage_path=str(run_dir), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    results = tuner.fit()
    rows = []
    for r in results:
        cfg = r.config["run"]
        hist = read_epochs(Path(r.path))  # the trial's own record of its epochs
        vals = [h[space.metric] for h in hist if h.get(space.metric) is not None]
        rows.append({"trial": cfg[CONFIRM_KEY], "seed": cfg["seed"], "status": "ERROR" if r.error else "TERMINATED",
                     "epochs_run": len(hist), "best_val_iou": best_value(vals, mode=space.mode),
                     "best_val_miou": best_value([h.get("val_miou") for h in hist]),
                     "error": str(r.error).splitlines()[0] if r.error else None})
    runs = pd.DataFrame(rows).sort_values(["trial", "seed"])
    write_text_atomic(run_dir / CONFIRM_CSV, runs.to_csv(index=False))
    summary = summarise_confirm(runs[runs.status == "TERMINATED"], picks[0])
    write_text_atomic(run_dir / CONFIRM_SUMMARY_CSV, summary.to_csv(index=False))
    return summary
