"""The trial side of a sweep: what runs inside a Ray worker, one call of the shared `train` per trial.

A trial rebuilds its train data from the arrays the driver put into Ray's object store once (every trial on
a node maps the same shared memory, nothing is recomputed), decides its device from the GPUs Ray granted it,
writes its own record (TRIAL_CONFIG, TRIAL_EPOCHS: see `sweeper.rundir.layout`), and reports every epoch with a
checkpoint so an interrupted sweep resumes, from Ray's snapshot or, after a kill -9 of the driver, from the
checkpoint on disk (`continued_state`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import torch

from sweeper.data.tokens import TrainData
from sweeper.files import append_jsonl
from sweeper.rundir.layout import BEST_KEY, CONFIRM_KEY, STATE_FILE, TRIAL_EPOCHS, TRIAL_KEY
from sweeper.rundir.records import trial_groups, truncate_epochs, write_trial_start
from sweeper.search.recovery import KEPT_MARK, KeptAsEndedError, kept_error
from sweeper.training.config import TrainConfig
from sweeper.training.device import release_memory, trial_device
from sweeper.training.objective import METRIC_KEY, MODE_KEY, Objective, best_index
from sweeper.training.train import load_checkpoint, train

log = logging.getLogger(__name__)


WALL_KEY = "wall_seconds"  # in a trial's checkpoint state: its wall time so far, summed over its resumes


def memory_mb() -> dict[str, float]:
    """This process's resident memory now (MB): RSS, and its private and shared parts."""
    out = {"rss_mb": psutil.Process().memory_info().rss / 2**20}
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


class PeakMemory:
    """One trial's own peak memory (MB), sampled in a thread from the trial's start to its end.

    Not ru_maxrss: that is the process's peak over its whole life, and Ray reuses a trial's process
    (its actor) for the next trial, which would then report an earlier trial's peak.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s  # between samples; a shorter spike can be missed
        self.peak = {"rss_mb": 0.0, "private_mb": 0.0, "shared_mb": 0.0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, float]:
        """Memory now, folded into the peaks."""
        now = memory_mb()
        for k in self.peak:
            self.peak[k] = max(self.peak[k], now.get(k, 0.0))
        return now

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="trial-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


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
    if isinstance(config.get("run"), dict):  # a confirm run: one grid point per (config, seed)
        config = config["run"]
    # zero-copy views of the object store's shared memory; train/val labels are those of the sweep's label mode
    data = TrainData.from_arrays(**arrays, label_mode=str(config.get("label_mode", "phase1")))
    folder = Path(tune.get_context().get_storage().trial_fs_path)  # this trial's folder under ray/ (storage)
    kept = kept_error(folder)
    if kept is not None:  # a resume restarts every errored trial; this one failed for its own reasons
        raise KeptAsEndedError(f"{KEPT_MARK}: {kept}")
    write_trial_start(folder, config, trial_id=tune.get_context().get_trial_id())
    number = config.get(TRIAL_KEY)  # the study's number; none in a confirm run
    objective = Objective.from_config(config)  # what its best epoch is: the sweep's metric and mode
    # confirm runs tag their source trial; sweep trials carry their study number
    config = {k: v for k, v in config.items() if k not in (CONFIRM_KEY, TRIAL_KEY, METRIC_KEY, MODE_KEY)}
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
    # lines written after the checkpoint it continues from (all of them when it starts afresh) go: the driver
    # stopped, or the trial's node was lost, after they were written and before Ray knew their checkpoint
    truncate_epochs(folder, len((resume or {}).get("history") or []))
    extra = {"gpu_ids": ",".join(str(i) for i in gpu_ids), "gpu_share": share, "node_id": node_id}

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        # written before the checkpoint: every checkpointed epoch has its line
        append_jsonl(folder / TRIAL_EPOCHS, {**metrics, **extra})
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(d))

    if cfg.threads:  # this trial process's torch threads: set here, `train` changes no global state
        torch.set_num_threads(cfg.threads)
    run_trial(cfg, data, report=report, resume=resume, objective=objective)


def run_trial(cfg: TrainConfig, data: TrainData, *, report: Callable[[dict[str, Any], dict[str, Any]], None],
              resume: dict[str, Any] | None = None, objective: Objective = Objective()) -> None:
    """Train one trial, handing `report` each epoch's metrics and checkpoint state.

    ASHA stops a trial by raising inside `report` (Ray's `tune.report`): the trial's memory is
    released however it ends.
    """
    on_gpu = cfg.device.startswith("cuda") and torch.cuda.is_available()
    if on_gpu:  # a reused worker process: this trial's own GPU peak, not an earlier trial's
        torch.cuda.reset_peak_memory_stats()
    # wall time: what the checkpoint resumed from had already run, plus this run's (Ray's elapsed_seconds
    # restarts on a resume)
    wall_before, started = float((resume or {}).get(WALL_KEY, 0.0)), time.perf_counter()
    # The best epoch's head rides in every checkpoint beside the latest state (that one is for resume):
    # the report ranks a trial by its best epoch, so `evaluate` scores that epoch's head.
    best: dict[str, Any] | None = (resume or {}).get(BEST_KEY)

    def on_epoch(record: dict[str, Any], run) -> None:
        nonlocal best
        memory.sample()
        peak = memory.peak
        metrics = epoch_metrics(record, data.class_names)
        state = {**run.state_dict(), WALL_KEY: wall_before + time.perf_counter() - started}
        metric = objective.metric
        i = best_index([r.get(metric) for r in run.history], mode=objective.mode)
        if i == len(run.history) - 1 and (best is None or best["epoch"] != record["epoch"]):  # a new best
            best = {"epoch": int(record["epoch"]), "metric": metric, metric: float(record[metric]),
                    "val_iou": float(record["val_iou"]), "head": state["head"]}
        metrics.update({"peak_rss_mb": peak["rss_mb"], "peak_private_mb": peak["private_mb"],
                        "peak_shared_mb": peak["shared_mb"], WALL_KEY: state[WALL_KEY],
                        # what this trial's allocator held at most (its CUDA context comes on top)
                        "gpu_peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if on_gpu else None,
                        objective.column: run.history[i][metric] if i is not None else math.nan,
                        "best_epoch": run.history[i]["epoch"] if i is not None else None})
        report(metrics, {**state, BEST_KEY: best} if best is not None else state)

    try:
        with PeakMemory() as memory:  # this trial's own, from here
            train(cfg, data, on_epoch=on_epoch, resume=resume)
    finally:
        release_memory()


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


def trial_arrays(data: TrainData) -> dict[str, np.ndarray]:
    """What every trial receives through the object store: cached tokens and labels, and the class
    pixel counts computed once here (not in every trial: that pass peaks at 8 bytes per label byte)."""
    return data.to_arrays()


def trial_bytes(data: TrainData) -> int:
    """Bytes of everything `trial_arrays` puts into the object store (what it must hold)."""
    return sum(a.nbytes for a in trial_arrays(data).values())
