"""Per-trial figures under actor reuse and resume: each trial's own peak memory, wall time over resumes."""

from __future__ import annotations

import time

import numpy as np
from test_train import learnable_data

from sweeper.search.trial import run_trial
from sweeper.training.config import TrainConfig

SMALL = {"image_height": 56, "image_width": 112}
CFG = TrainConfig(optimizer="adamw", lr=1e-3, epochs=2, batch_size=4, device="cpu", threads=1, **SMALL)
BIG = 1000  # MB a first trial holds for a while, in the same process as the next trial (a reused Ray actor)


def test_a_reused_worker_reports_each_trials_own_peak():
    data = learnable_data()
    held: list[np.ndarray] = []
    first: list[dict] = []

    def hog(m, s):  # epoch 1: touch BIG MB and keep them until the trial ends
        first.append(m)
        if not held:
            held.append(np.ones(BIG * 2**20 // 8))

    run_trial(CFG, data, report=hog)
    held.clear()  # the first trial's memory is gone; the process (the actor) lives on
    second: list[dict] = []
    run_trial(CFG, data, report=lambda m, s: second.append(m))
    # the second trial's peak leaves the first's BIG MB out; half of it is the margin, because a long-lived
    # process's own heap moves by a hundred MB or so between two runs (seen in the full suite: +115 MB)
    assert first[-1]["peak_rss_mb"] > second[-1]["peak_rss_mb"] + BIG * 0.5, (first[-1], second[-1])
    assert first[-1]["peak_private_mb"] > second[-1]["peak_private_mb"] + BIG * 0.5
    # the second trial's peak is its own, not below what it uses now
    assert second[-1]["peak_rss_mb"] >= second[0]["peak_rss_mb"] > 0


def test_wall_seconds_add_up_across_a_resume():
    data = learnable_data()
    cfg = CFG.replace(epochs=3)
    reported: list[tuple[dict, dict]] = []
    run_trial(cfg, data, report=lambda m, s: reported.append((m, s)))
    walls = [m["wall_seconds"] for m, _ in reported]
    assert walls == sorted(walls) and walls[0] > 0
    again: list[tuple[dict, dict]] = []  # resumed from epoch 2's checkpoint, as after an interruption
    t = time.perf_counter()
    run_trial(cfg, data, report=lambda m, s: again.append((m, s)), resume=reported[1][1])
    resumed_for = time.perf_counter() - t
    (m3, s3), = again
    assert m3["epoch"] == 3 and m3["wall_seconds"] > walls[1]  # counts on from the checkpoint's time
    assert 0 < m3["wall_seconds"] - walls[1] <= resumed_for  # plus its own time, no more
    assert s3["wall_seconds"] == m3["wall_seconds"]


def test_tables_take_wall_seconds_from_the_trials_own_count(tmp_path):
    from sweeper import files
    from sweeper.rundir.layout import EXPERIMENT_DIR, TRIAL_EPOCHS, TRIAL_KEY
    from sweeper.rundir.records import write_trial_end, write_trial_start
    from sweeper.search.space import load_space
    from sweeper.search.tables import collect

    (tmp_path / "s.yaml").write_text("""
metric: val_iou
mode: max
trials: 1
asha: {max_epochs: 2, grace_period: 1, reduction_factor: 2}
fixed: {epochs: 2}
params:
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
""")
    folder = tmp_path / "run" / EXPERIMENT_DIR / "t0"
    write_trial_start(folder, {"lr": 1e-4, "epochs": 2, TRIAL_KEY: 0}, trial_id="a")
    # epoch 2 ran after a resume: Ray's elapsed_seconds restarted, the trial's own count did not
    files.append_jsonl(folder / TRIAL_EPOCHS, {"epoch": 1, "val_iou": 0.1, "elapsed_seconds": 50.0,
                                               "wall_seconds": 50.0})
    files.append_jsonl(folder / TRIAL_EPOCHS, {"epoch": 2, "val_iou": 0.2, "elapsed_seconds": 20.0,
                                               "wall_seconds": 70.0})
    write_trial_end(folder, "TERMINATED")
    trials, _ = collect(tmp_path / "run", load_space(tmp_path / "s.yaml"))
    assert trials.wall_seconds.tolist() == [70.0]
