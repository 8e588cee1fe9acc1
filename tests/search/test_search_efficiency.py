"""scripts/bench/search_efficiency.py end to end on a tiny budget: sweeper's default (through Ray) and Optuna alone
(no Ray), one sweep seed each, the winners confirmed, the results file and the figure written. The numbers are
checked against each other: the curve is the running best of the epochs the sweep reported, the first TPE proposal
trains to the same val IoU with and without Ray, the confirmed score is the mean of the confirm runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench" / "search_efficiency.py"
BUDGET = 4  # trial-epochs per sweep: two 2-epoch trials of the smoke space

pytestmark = pytest.mark.slow  # starts Ray and trains: one run of the script, shared by the tests below


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> Iterator[tuple[dict, Path]]:
    tmp = tmp_path_factory.mktemp("search_efficiency")
    out, figure = tmp / "search_efficiency.json", tmp / "search_efficiency.png"
    work = tempfile.mkdtemp(prefix="seff-", dir="/tmp")  # short: Ray's socket paths live under it (107 bytes at most)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SWEEPER_CACHE": str(tmp / "cache")}
    try:
        done = subprocess.run([sys.executable, str(SCRIPT), "--space", "smoke", "--images", "2", "--budget",
                               str(BUDGET), "--seeds", "1", "--methods", "sweeper,optuna_sha", "--confirm-seeds", "2",
                               "--device", "cpu", "--work", work, "--out", str(out), "--figure", str(figure)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    yield json.loads(out.read_text()), figure


def test_each_curve_is_the_running_best_of_the_epochs_its_sweep_reported(result):
    r, _ = result
    assert list(r["methods"]) == ["sweeper", "optuna_sha"] and r["budget_trial_epochs"] == BUDGET
    for m in r["methods"].values():
        (run,) = m["runs"]
        values = [v for _, _, v in run["events"]]
        assert len(values) == run["trial_epochs_counted"] == BUDGET
        assert run["curve"] == [max(values[:k]) for k in range(1, BUDGET + 1)]
        best = max(values)
        assert run["winner_sweep_score"] == best and 0 < best < 1
        assert run["winner"] == next(t for t, _, v in run["events"] if v == best)
        assert m["curve_median"] == m["curve_min"] == m["curve_max"] == [round(v, 5) for v in run["curve"]]
        assert run["wall_seconds"] > 0 and m["wall_seconds"] >= run["wall_seconds"]
    assert r["methods"]["sweeper"]["runs"][0]["trials_at_once"] == 2  # the smoke space's concurrency
    assert r["methods"]["optuna_sha"]["runs"][0]["trials_at_once"] == 1


def test_the_first_tpe_proposal_trains_alike_through_ray_and_optuna_alone(result):
    # sweeper's trial 0 is the phase-1 point, its trial 1 TPE's first draw; Optuna alone starts with that draw
    # (the same sampler, seed 0): the same config, trained by the same `train`, gives the same val IoU
    r, _ = result
    ray_events = {(t, e): v for t, e, v in r["methods"]["sweeper"]["runs"][0]["events"]}
    alone = {(t, e): v for t, e, v in r["methods"]["optuna_sha"]["runs"][0]["events"]}
    assert ray_events[(1, 1)] == pytest.approx(alone[(0, 1)], abs=1e-6)
    assert (0, 1) in ray_events and ray_events[(0, 1)] != pytest.approx(alone[(0, 1)], abs=1e-6)


def test_each_winner_is_confirmed_as_the_mean_of_its_retrained_seeds(result):
    r, _ = result
    runs = r["confirm"]["runs"]
    assert r["confirm"]["seeds"] == 2 and r["confirm"]["configs"] >= 2  # the phase-1 config and >= 1 winner
    for m in r["methods"].values():
        (run,) = m["runs"]
        scores = [x["best_val_iou"] for x in runs if x["trial"] == run["confirmed_config"]]
        assert len(scores) == 2 and all(x["status"] == "TERMINATED" for x in runs)
        assert run["confirmed"]["mean"] == pytest.approx(sum(scores) / 2)
        assert run["confirmed"]["std"] == pytest.approx(abs(scores[0] - scores[1]) / 2 ** 0.5)
        assert m["confirmed_mean"] == pytest.approx(run["confirmed"]["mean"])
    base = [x["best_val_iou"] for x in runs if x["trial"] == 0]
    assert r["confirm"]["phase1_config"]["mean"] == pytest.approx(sum(base) / 2)
    sweep = r["methods"]["sweeper"]["runs"][0]
    assert (sweep["winner"] == 0) == (sweep["confirmed_config"] == 0)  # only the phase-1 trial is config 0
    assert r["methods"]["optuna_sha"]["runs"][0]["confirmed_config"] != 0


def test_the_decision_and_the_machine_are_recorded_and_the_figure_drawn(result):
    r, figure = result
    d = r["decision"]["by_method"]
    assert d["sweeper"]["verdict"] == "reference" and d["sweeper"]["gain_vs_default"] == 0
    assert d["optuna_sha"]["gain_vs_default"] == pytest.approx(r["methods"]["optuna_sha"]["confirmed_mean"]
                                                                - r["methods"]["sweeper"]["confirmed_mean"])
    assert d["optuna_sha"]["verdict"] == "cannot tell: fewer than 2 seeds"  # one sweep seed: no spread over seeds
    assert r["machine_before"]["cpu_model"] and r["machine_before"]["cpus"] >= 1
    assert r["data"]["synthetic"] and (r["data"]["train_images"], r["data"]["val_images"]) == (2, 1)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
