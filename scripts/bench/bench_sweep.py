"""Sweep: `sweeper search` over search_spaces/phase2.yaml as a user runs it (own process, fresh cache),
against 10 x the measured naive epoch (phase 1's 10 epochs); its wall time broken down.

Trial start, end and actor pid come from Ray's own result.json: they measure Ray (its time_total_s, its
reuse of actor processes), which the project's trial records do not describe.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_setup import BACKBONE, NAIVE_EPOCHS, PHASE2, Bench
from common import Sampler, log
from sweeper.files import read_csv, read_json, read_jsonl
from sweeper.rundir.layout import EXPERIMENT_DIR, HISTORY_CSV, SWEEP_FILE, TRIALS_CSV


def trial_spans(exp_dir: Path) -> list[dict[str, float]]:
    """Start, end (1 s resolution), seconds, actor pid and peak memory of each trial, from its result.json."""
    spans = []
    for d in exp_dir.glob("trial_main_*"):
        rows = read_jsonl(d / "result.json")
        if rows:
            last = rows[-1]
            spans.append({"start": last["timestamp"] - last["time_total_s"], "end": float(last["timestamp"]),
                          "seconds": last["time_total_s"], "pid": last["pid"],  # the (reused) trial actor
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
                          "peak_private_mb": max(r["peak_private_mb"] for r in rows),
                          "peak_shared_mb": max(r["peak_shared_mb"] for r in rows)})
    return sorted(spans, key=lambda x: x["start"])


def busy_slots(spans: list[dict[str, float]], most: int) -> dict[int, float]:
    """Seconds during which k trials ran at once, from the first trial start to the last trial end.

    Ends are whole seconds, so a trial may seem to start before the one it replaces ended:
    counts above `most` (the concurrency limit) are folded into `most`.
    """
    events = sorted([(x["start"], 1) for x in spans] + [(x["end"], -1) for x in spans])
    out: dict[int, float] = {k: 0.0 for k in range(most + 1)}
    running, last = 0, events[0][0]
    for t, step in events:
        out[min(running, most)] += t - last
        running, last = running + step, t
    return out


class TreeCpu(Sampler):
    """CPU seconds (user + system) of a process and all its descendants, sampled from /proc.

    Ray's workers are not reaped by the driver, so getrusage(RUSAGE_CHILDREN) misses them; each
    process's counters are read every `interval` s and its last reading kept (a process that
    ends loses at most its last interval). CPU time barely changes with other jobs' load, wall
    time does: the two ratios together separate the code's cost from the machine's noise.
    """

    def __init__(self, root: int, interval: float = 0.25) -> None:
        super().__init__(interval)
        self.root = root
        self.last: dict[int, float] = {}
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        parent, cpu = {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                text = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
            parent[int(d)] = int(fields[1])
            cpu[int(d)] = (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
        for pid in cpu:
            p = pid
            while p > 1 and p != self.root:
                p = parent.get(p, 0)
            if p == self.root:
                self.last[pid] = cpu[pid]

    def seconds(self) -> float:
        return float(sum(self.last.values()))


def run_sweep(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run the sweep's command; its launch time (wall clock), wall seconds and the process tree's CPU seconds."""
    log("  " + " ".join(cmd))
    launched = time.time()  # wall clock, to place the trials' whole-second stamps on the timeline
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeCpu(proc.pid) as cpu:
        _, stderr = proc.communicate()
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{stderr[-3000:]}")
    return launched, wall, cpu.seconds()


def timeline(spans: list[dict[str, float]], concurrent: int, launched: float, wall: float) -> dict[str, float]:
    """The sweep's wall time, in order (whole-second trial stamps: +-1 s each)."""
    first_start, last_end = min(x["start"] for x in spans), max(x["end"] for x in spans)
    return {"launch_to_first_trial": first_start - launched,  # imports, backbone, cache, ray.init, first actor
            **{f"trials_{k}_at_once": v for k, v in sorted(busy_slots(spans, concurrent).items(), reverse=True)},
            "last_trial_to_exit": launched + wall - last_end}  # tables, Ray shutdown


def actor_memory(spans: list[dict[str, float]]) -> tuple[dict[str, float], float]:
    """Each reused trial actor's largest private peak, and what two trials at once hold: at any time at most
    the two largest actors' private peaks plus the shared pages (cache, libraries) once."""
    peaks: dict[str, float] = {}
    for x in spans:
        peaks[str(x["pid"])] = max(peaks.get(str(x["pid"]), 0.0), x["peak_private_mb"])
    return peaks, float(sum(sorted(peaks.values())[-2:]) + max(x["peak_shared_mb"] for x in spans))


def timed_sweep(b: Bench) -> dict[str, Any]:
    """`sweeper search` as a user runs it (own process, fresh cache, phase2.yaml); wall time and breakdown."""
    cache = b.work / "sweep-cache"  # empty: the sweep builds its own cache, and pays for it
    out = b.work / "runs"
    cmd = [sys.executable, "-m", "sweeper", "-q", "search", "--data", str(b.root), "--backbone", BACKBONE,
           "--space", str(PHASE2), "--trials", str(b.plan.sweep_trials), "--out", str(out), "--name", "sweep",
           "--cache-dir", str(cache)]
    load_before = os.getloadavg()
    launched, wall, cpu_s = run_sweep(cmd, b.env)
    run = out / "sweep"
    info = read_json(run / SWEEP_FILE)
    table, history = read_csv(run / TRIALS_CSV), read_csv(run / HISTORY_CSV)
    concurrent = int(info["options"]["max_concurrent"])
    trial_compute = float(table.wall_seconds.fillna(0).sum())  # inside train(): the head's own work
    spans = trial_spans(run / EXPERIMENT_DIR)
    actor_peaks, two_trials = actor_memory(spans)
    return {
        "command": " ".join(cmd), "trials": len(table), "status": table.status.value_counts().to_dict(),
        "max_concurrent": concurrent, "cpus_per_trial": info["options"]["cpus_per_trial"],
        "epochs_run": int(len(history)), "stopped_early": int(table.stopped_early.sum()),
        "epochs_if_no_asha": int(table.epochs_planned.sum()),
        "wall_s": wall,
        "cpu_s": cpu_s,  # CPU seconds of the whole process tree (driver, Ray, trials)
        "timeline_s": timeline(spans, concurrent, launched, wall),
        "parts_s": {
            "cache_build": sum(read_json(p)["seconds"] for p in (cache / "tokens").glob("*.json")),
            # the process's life outside `sweeper search`'s own timer: interpreter start and imports
            # (in launch_to_first_trial) plus exit with Ray's shutdown (in last_trial_to_exit)
            "imports_and_exit": wall - info["wall_seconds"],
        },
        # the head's own training (train()'s seconds, all trials) spread over the trial slots
        "trial_training_over_concurrency_s": trial_compute / concurrent,
        "trial_training_s_total": trial_compute,
        "first_trial_start_to_last_end_s": max(x["end"] for x in spans) - min(x["start"] for x in spans),
        "trial_actor_s_total": float(sum(x["seconds"] for x in spans)),  # Ray's time_total_s: train() + reports
        "epoch_s_total": float(history.epoch_seconds.sum()),
        "epoch_s_median": float(history.epoch_seconds.median()),
        "driver_peak_rss_mb": info.get("driver_peak_rss_mb"),
        "trial_peak_private_mb": table.peak_private_mb.describe()[["50%", "max"]].to_dict(),
        "trial_peak_shared_mb": table.peak_shared_mb.describe()[["50%", "max"]].to_dict(),
        "actor_peak_private_mb": actor_peaks,  # trials run in `concurrent` reused actor processes
        "two_trial_memory_mb": two_trials,
        "epochs_run_per_trial": {int(k): int(v) for k, v in table.epochs_run.value_counts().sort_index().items()},
        "baseline_trial_epochs": int(table[table.baseline].epochs_run.iloc[0]) if table.baseline.any() else None,
        "best_val_iou": float(table.best_val_iou.max()),
        "load_avg_before_after": [load_before, os.getloadavg()],
    }


def against_naive(sweep: dict[str, Any], epochs: dict[str, Any]) -> dict[str, Any]:
    """The sweep ratio: the sweep against one naive 10-epoch run, in wall and in CPU seconds."""
    naive_run = NAIVE_EPOCHS * epochs["median_s"]["naive"]
    naive_cpu = NAIVE_EPOCHS * epochs["median_cpu_s"]["naive"]
    return {"naive_10_epochs_s": naive_run,
            "naive_10_epochs_is": "extrapolated: 10 x the measured median naive epoch (deterministic work)",
            "ratio": sweep["wall_s"] / naive_run,
            "naive_10_epochs_cpu_s": naive_cpu,
            "cpu_ratio": sweep["cpu_s"] / naive_cpu}  # the same comparison in CPU seconds


def describe(s: dict[str, Any]) -> list[str]:
    """The sweep's figures: its timeline and parts, the ratio when measured, its trials' memory."""
    lines = [f"sweep ({s['trials']} trials, {s['epochs_run']} epochs run of {s['epochs_if_no_asha']} planned): "
             f"{s['wall_s']:.0f} s = " + " + ".join(f"{k} {v:.0f}" for k, v in s["timeline_s"].items()),
             "  of which " + ", ".join(f"{k} {v:.0f} s" for k, v in s["parts_s"].items())
             + f"; head training {s['trial_training_s_total']:.0f} s in all = "
             f"{s['trial_training_over_concurrency_s']:.0f} s over {s['max_concurrent']} slots; "
             f"median epoch {s['epoch_s_median']:.2f} s; epochs per trial {s['epochs_run_per_trial']} "
             f"(baseline trial {s['baseline_trial_epochs']})"]
    if "ratio" in s:
        lines.append(f"  vs naive 10 epochs {s['naive_10_epochs_s']:.0f} s ({s['naive_10_epochs_is']}): ratio "
                     f"{s['ratio']:.2f}; CPU seconds: sweep {s['cpu_s']:.0f}, naive 10 epochs "
                     f"{s['naive_10_epochs_cpu_s']:.0f}")
    lines.append("  trial actors' private peaks " + ", ".join(f"{v:.0f}" for v in s["actor_peak_private_mb"].values())
                 + f" MB; driver peak RSS {s['driver_peak_rss_mb']:.0f} MB")
    return lines
