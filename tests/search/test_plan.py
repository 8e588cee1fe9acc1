"""sweeper plan: the cost model on crafted numbers, the command on a tiny set, and search's refusals."""

from __future__ import annotations

import argparse
import json
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset

from sweeper.errors import SweeperError
from sweeper.search import plan, plan_epochs
from sweeper.search.space import AshaSettings, load_space

GIB = 2**30
TINY_SPACE = """
metric: val_iou
mode: max
trials: 3
max_concurrent: 2
asha: {max_epochs: 2, grace_period: 1, reduction_factor: 2}
fixed: {image_height: 56, image_width: 112, train_metrics: false, epochs: 2}
params:
  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
  batch_size: {type: categorical, choices: [2, 4]}
"""


def test_asha_rungs_are_rays():
    assert plan_epochs.asha_milestones(AshaSettings(max_epochs=10, grace_period=1, reduction_factor=3)) == [1, 3, 9]
    assert plan_epochs.asha_milestones(AshaSettings(max_epochs=2, grace_period=1, reduction_factor=2)) == [1, 2]


def test_synchronous_survival_is_the_lower_bound_per_trial():
    # 10 planned epochs, rungs 1, 3, 9, a third passing each: 1 + 2/3 + 6/9 + 1/27
    assert plan_epochs.synchronous_epochs(10, [1, 3, 9], 3) == pytest.approx(1 + 2 / 3 + 6 / 9 + 1 / 27)
    assert plan_epochs.synchronous_epochs(2, [1, 3, 9], 3) == pytest.approx(1 + 1 / 3)  # ends before the second rung


def test_the_asynchronous_rule_stops_a_later_trial_below_the_recorded_quantile():
    # three trials of 4 epochs, one rung at 1 (factor 2: the median). The baseline's score is the lowest
    # (next test), so trial 1 always passes; trial 2 is stopped when its score is below the median of the
    # baseline's and trial 1's, i.e. below half of trial 1's: a quarter of the time
    sims = plan_epochs.simulate_asha(3, np.array([[4, 1.0]]), 4, [1], 2, runs=4000)
    assert set(np.unique(sims)) == {9.0, 12.0}
    assert sims.mean() == pytest.approx(12 - 3 / 4, abs=0.12)
    assert plan_epochs.simulate_asha(1, np.array([[4, 1.0]]), 10, [1, 3, 9], 3, runs=10).tolist() == [10.0] * 10


def test_the_baseline_trial_scores_below_every_sampled_trial_at_each_rung():
    # Trial 0 is phase 1 (SGD at a constant lr 1e-4), which the reference report finds underfitting and still
    # climbing at epoch 10: at an early rung it is behind the sampled trials, so the first trial compared with
    # it alone passes every time (the baseline drawn like any other trial stopped it half the time)
    sims = plan_epochs.simulate_asha(2, np.array([[4, 1.0]]), 4, [1], 2, runs=500, per_trial=True)
    assert sims[:, 1].tolist() == [4.0] * 500


def test_the_default_space_trial_epoch_range():
    space = load_space(Path("search_spaces/phase2.yaml"))
    e = plan_epochs.trial_epoch_range(space, 12)
    dist = plan_epochs.epochs_distribution(space)
    assert dist[:, 0].tolist() == list(range(4, 11)) and dist[:, 1].sum() == pytest.approx(1)
    lower = 10 + 11 * np.mean([plan_epochs.synchronous_epochs(v, [1, 3, 9], 3) for v in range(4, 11)])
    assert e["lower"] == pytest.approx(lower, abs=0.05)
    assert e["upper"] == 10 + 11 * 10  # nothing stopped, every trial at the space's longest
    assert e["lower"] < e["expected"] < e["upper"]


def test_the_memory_probe_runs_the_spaces_most_demanding_trial(tmp_path):
    # phase 2 can choose batch 8 and Adam (two parameter-sized moments against SGD's one momentum buffer)
    worst = plan.memory_worst_point(load_space(Path("search_spaces/phase2.yaml")), in_channels=384, num_classes=11)
    assert worst["batch_size"] == 8 and worst["optimizer"] in ("adam", "adamw") and worst["head"] == "convnext_phase1"
    # phase 3's heads: phase 1's has the most parameters (2,432,907 against convnext_up's 1,547,275)
    assert plan.head_parameters("linear", in_channels=384, num_classes=11) == 384 * 11 + 11
    counts = {h: plan.head_parameters(h, in_channels=384, num_classes=11) for h in ("convnext_phase1", "convnext_up")}
    assert counts["convnext_phase1"] > counts["convnext_up"] > 10**6
    assert plan.memory_worst_point(load_space(Path("search_spaces/phase3.yaml")), in_channels=384,
                                   num_classes=11)["head"] == "convnext_phase1"
    # an int batch range gives its upper bound; SGD alone keeps SGD, at the highest momentum it can take
    space = tmp_path / "s.yaml"
    space.write_text(TINY_SPACE.replace("{type: categorical, choices: [2, 4]}", "{type: int, low: 2, high: 16}")
                     + "  head: {type: categorical, choices: [convnext_phase1, linear, convnext_up]}\n"
                     + "  momentum: {type: uniform, low: 0.5, high: 0.95}\n")
    worst = plan.memory_worst_point(load_space(space), in_channels=384, num_classes=11)
    assert worst["batch_size"] == 16 and worst["optimizer"] == "sgd" and worst["momentum"] == 0.95
    assert worst["head"] == "convnext_phase1"
    assert [plan.optimizer_state(o, 0.9) for o in ("sgd", "adam", "adamw")] == [1, 2, 2]
    # each probe trial runs 4 epochs (a trial's running peak climbs over its first epochs), fewer when the
    # space's trials are shorter
    assert plan.probe_epochs(load_space(Path("search_spaces/phase2.yaml"))) == plan.PROBE_EPOCHS == 4
    assert plan.probe_epochs(load_space(Path("search_spaces/smoke.yaml"))) == 2
    # never fewer than 2: a trial's first epoch is cold, its second times the sweep's epochs (1-epoch trials too)
    one = tmp_path / "one.yaml"
    one.write_text(TINY_SPACE.replace("max_epochs: 2", "max_epochs: 1").replace("epochs: 2}", "epochs: 1}"))
    assert plan_epochs.epochs_distribution(load_space(one))[:, 0].tolist() == [1]
    assert plan.probe_epochs(load_space(one)) == 2
    assert plan.optimizer_state("sgd", 0.0) == 0


def test_every_trial_pays_its_cold_first_epoch():
    bench = plan.Bench(device="cpu", threads=1, backbone_s_per_image=0.4, train_s_per_image={}, eval_s_per_image={},
                       working_set_mb={}, cold_epoch_s={"convnext_phase1/2": 1.0, "convnext_phase1/4": 3.0})
    # the mean over the batch sizes the space can choose, twice as slow under contention
    assert plan.cold_epoch_seconds(bench, ["convnext_phase1"], [2, 4], 2.0) == pytest.approx(4.0)
    # 4 trials, 10 trial-epochs of 2 s, 2 at once: Ray's start-up and set-up, then (10 x 2 + 4 x 3 s) / 2
    assert plan.sweep_seconds(10, epoch_s=2.0, cold_s=3.0, trials=4, concurrent=2) == pytest.approx(
        plan.RAY_START_S + 4 * plan.TRIAL_SETUP_S + 16.0)
    assert plan.sweep_seconds(10, epoch_s=2.0, cold_s=0.0, trials=4, concurrent=1) == pytest.approx(
        plan.RAY_START_S + 4 * plan.TRIAL_SETUP_S + 20.0)
    # a start measured here replaces the constant
    assert plan.sweep_seconds(10, epoch_s=2.0, cold_s=0.0, trials=4, concurrent=1, start_s=30.0) == pytest.approx(
        30.0 + 4 * plan.TRIAL_SETUP_S + 20.0)


def test_trials_fill_the_slots_in_order_and_the_last_ones_can_run_alone():
    assert plan.makespan([4, 4, 4], 2) == 8  # the third trial starts when one of the first two ends
    assert plan.makespan([10, 1, 1, 1], 2) == 10 and plan.makespan([3, 3], 1) == 6
    # two simulated sweeps of 3 trials (2 epochs each; the second had one stopped after 1), 2 at once:
    # start + the mean of their makespans
    sims = np.array([[2, 2, 2], [2, 1, 2]])
    per = lambda e: e * 4.0 + 1.0 + plan.TRIAL_SETUP_S  # noqa: E731  4 s epochs, 1 s cold extra
    want = 10.0 + (plan.makespan([per(2)] * 3, 2) + plan.makespan([per(2), per(1), per(2)], 2)) / 2
    got = plan.simulated_sweep_seconds(sims, epoch_s=4.0, cold_s=1.0, concurrent=2, start_s=10.0)
    assert got == pytest.approx(want)
    # against trial-epochs packed perfectly (6 x 4 s / 2): the lone third trial costs a whole trial more
    assert want > plan.sweep_seconds(6, epoch_s=4.0, cold_s=1.0, trials=3, concurrent=2, start_s=10.0)


def test_the_baseline_trial_pays_its_own_epochs():
    # trial 0 at phase 1's batch 2 (0.2 s per training image), the others at the space's mean (batch 2 or 8)
    bench = plan.Bench(device="cpu", threads=1, backbone_s_per_image=0.4, working_set_mb={},
                       train_s_per_image={"convnext_phase1/2": 0.2, "convnext_phase1/8": 0.05},
                       eval_s_per_image={"convnext_phase1": 0.01})
    base = plan.trial_epoch_seconds(bench, ["convnext_phase1"], [2], 10, 5, 1.0)
    mean = plan.trial_epoch_seconds(bench, ["convnext_phase1"], [2, 8], 10, 5, 1.0)
    assert base == pytest.approx(2.05) and mean == pytest.approx((2.05 + 0.55) / 2)
    sims = np.array([[10, 1, 3]])
    got = plan.simulated_sweep_seconds(sims, epoch_s=mean, baseline_epoch_s=base, cold_s=0.0, concurrent=1,
                                       start_s=0.0)
    assert got == pytest.approx(10 * 2.05 + 4 * 1.3 + 3 * plan.TRIAL_SETUP_S)
    # the lower bound packs the baseline's epochs at its cost, the others' at the mean
    low = plan.sweep_seconds(14, epoch_s=mean, baseline=(10, base), cold_s=0.0, trials=3, concurrent=1, start_s=0.0)
    assert low == pytest.approx(got)


def test_a_trial_epoch_in_the_sweep_against_the_models_own():
    # the probe's warm epochs (each trial's first is cold) against the model's projection of the same epoch
    probe = {"trials": [{"epoch_seconds": [5.0, 2.2, 2.0]}, {"epoch_seconds": [4.0, 2.4, 2.6]}]}
    assert plan.sweep_epoch_factor(probe, 2.0) == pytest.approx(2.3 / 2.0)
    assert plan.sweep_epoch_factor({}, 2.0) == 1.0  # not measured (a probe that could not run)
    assert plan.sweep_epoch_factor({"trials": [{"epoch_seconds": [5.0]}]}, 2.0) == 1.0  # no warm epoch


def test_durations_read_at_a_glance():
    # the embedded set's cache builds in 12 s: "0 min" said nothing
    assert [plan.duration(x) for x in (12.4, 89, 150, 5399, 5400, 20_000)] == [
        "12 s", "89 s", "2 min", "90 min", "1.5 h", "5.6 h"]
    p = {"trial_epochs": {"expected": 52, "lower": 33, "upper": 120}, "options": {"max_concurrent": 2},
         "time": {"sweep_seconds": 45.0}, "resources": {}}
    assert plan.plan_summary(p) == "plan: 52 trial-epochs expected (33-120); about 45 s at 2 at once"


def test_a_trial_reading_more_cached_tokens_holds_more_private_memory():
    # the probe ran on 10 MB of tokens; the sweep's are 1,010 MB: 1,000 MB more, at STORE_PRIVATE_PER_MB each
    mb = 2**20
    assert plan.trial_memory_mb(500.0, 1010 * mb, 10 * mb) == pytest.approx(500 + 1000 * plan.STORE_PRIVATE_PER_MB)
    assert plan.trial_memory_mb(500.0, 5 * mb, 10 * mb) == 500.0  # fewer than the probe's: its own peak
    assert 0 < plan.STORE_PRIVATE_PER_MB < 1  # shared, not copied: a fraction of each MB


def test_the_backbone_is_timed_by_its_fastest_warm_batch():
    from sweeper.search.plan_measure import warm_seconds_per_image

    # the first batch pays for lazy set-up; of the rest the fastest (others' work only slows a batch down)
    assert warm_seconds_per_image([9.0, 2.0, 1.6, 3.0], [4, 4, 4, 4]) == pytest.approx(0.4)
    assert warm_seconds_per_image([9.0, 2.0, 0.9], [4, 4, 2]) == pytest.approx(0.45)  # per image, a short last batch
    assert warm_seconds_per_image([3.0], [4]) == pytest.approx(0.75)  # a single batch is all there is


def test_contention_only_when_trials_outnumber_the_cores():
    assert plan.contention(2, 1, 2, "cpu") == 1.0
    assert plan.contention(4, 1, 2, "cpu") == 2.0
    assert plan.contention(2, 2, 2, "cpu") == 2.0
    assert plan.contention(8, 1, 2, "cuda") == 1.0


def test_trial_and_naive_epochs_from_measured_steps():
    bench = plan.Bench(device="cpu", threads=1, backbone_s_per_image=0.4,
                       train_s_per_image={"convnext_phase1/2": 0.1, "convnext_phase1/4": 0.06},
                       eval_s_per_image={"convnext_phase1": 0.03}, working_set_mb={"convnext_phase1/2": 100})
    # 10 train, 4 val: mean over batch 2 and 4 of 10 x step + 4 x eval, twice as slow under contention
    assert plan.trial_epoch_seconds(bench, ["convnext_phase1"], [2, 4], 10, 4, 2.0) == pytest.approx(
        2 * ((10 * 0.1 + 4 * 0.03) + (10 * 0.06 + 4 * 0.03)) / 2)
    # phase 1: train images see the backbone twice (step, train metrics), val images twice (loss, metrics)
    assert plan.naive_epoch_seconds(bench, 10, 4) == pytest.approx(10 * (0.8 + 0.1 + 0.03) + 4 * 2 * 0.43)


def test_gpu_recommendation_is_the_smallest_share_that_holds_the_trial_with_margin():
    need = {share: 600.0 for share in plan.GPU_SHARES}
    rec = plan.recommend_gpu(need, 6 * GIB, None)
    # caps on a 6 GiB card: 1/8 -> 192 MB, 1/6 -> 427, 1/5 -> 614 (< 600 x 1.2), 1/4 -> 896
    assert rec["gpus_per_trial"] == 0.25 and rec["max_concurrent"] == 4 and rec["cap_mb"] == 896
    assert plan.recommend_gpu({s: 10_000.0 for s in plan.GPU_SHARES}, 6 * GIB, None) is None
    assert plan.recommend_gpu(need, 80 * GIB, 6 * GIB)["gpus_per_trial"] == 0.25  # --gpu-memory 6


def test_cpu_recommendation_by_cores_or_memory():
    assert plan.recommend_cpu(1000, 3000, 8, 1) == {"gpus_per_trial": 0, "max_concurrent": 2,
                                                    "limited_by": "memory", "margin": 1.5}
    assert plan.recommend_cpu(500, 20_000, 2, 1)["max_concurrent"] == 2
    assert plan.recommend_cpu(500, 20_000, 2, 1)["limited_by"] == "cores"


def test_a_share_whose_cap_cannot_hold_the_measured_trial_is_refused_in_one_line(tmp_path):
    crafted = {"resources": {"gpu_working_set_mb": 1200}, "recommendation": {"gpus_per_trial": 0.5}}
    with pytest.raises(SweeperError) as e:
        plan.check_share_fits(crafted, 0.25, 6 * GIB, None, tmp_path / "plan.json")
    msg = str(e.value)
    assert msg.startswith("--gpus-per-trial 0.25: a trial needs ~1200 MB") and "cap is 896 MB" in msg
    assert "--gpus-per-trial 0.5" in msg and "\n" not in msg
    plan.check_share_fits(crafted, 0.5, 6 * GIB, None, tmp_path / "plan.json")  # 2.25 GiB holds it
    plan.check_share_fits(None, 0.25, 6 * GIB, None, tmp_path / "plan.json")  # no plan: nothing to check


@pytest.fixture
def tiny(tmp_path):
    data = make_dataset(tmp_path / "data", train=4, val=2, size=(112, 56))
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    return data, space


def test_plan_command_on_a_tiny_set(tiny, tmp_path, capsys, monkeypatch):
    from sweeper.cli.main import main
    from sweeper.search import plan_measure

    # a real trial's memory is measured by the slow test below; here a fixed figure keeps this one fast
    probed = []

    def fake_trial(config, **shape):
        probed.append((config, shape))
        return {"config": config, "trials": [{"peak_private_mb": 300.0, "epoch_seconds": [2.0, 1.0, 1.2]},
                                             {"peak_private_mb": 280.0, "epoch_seconds": [1.5, 1.0, 1.1]}],
                "start_s": 20.0, "n_train": shape["n_train"], "n_val": shape["n_val"],
                "concurrent": shape["concurrent"]}

    monkeypatch.setattr(plan_measure, "trial_process", fake_trial)

    data, space = tiny
    out = tmp_path / "out"
    assert main(["-q", "plan", "--data", str(data), "--backbone", "random_vits14", "--space", str(space),
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for row in ("data", "measured here", "cache", "trial-epochs", "time", "memory", "recommendation",
                "search would refuse"):
        assert any(line.startswith(row) for line in table.splitlines()), (row, table)
    p = json.loads((out / "plan.json").read_text())
    assert p["data"]["train_images"] == 4 and p["data"]["val_images"] == 2
    assert set(p["bench"]["train_s_per_image"]) == {"convnext_phase1/2", "convnext_phase1/4"}
    assert all(v > 0 for v in p["bench"]["train_s_per_image"].values())
    # 2 splits x (labels + float16 tokens of a 4x8 grid of 384): exact bytes, none built yet
    grid = 4 * 8 * 384 * 2
    want = (4 + 2) * (56 * 112 + grid) + 4 * 128
    assert p["resources"]["cache_bytes"] == want == p["resources"]["cache_missing_bytes"]
    assert not (tmp_path / "cache" / "tokens").exists()  # a plan builds nothing
    e = p["trial_epochs"]
    assert e["lower"] <= e["expected"] <= e["upper"] == 2 + 2 * 2
    assert p["time"]["sweep_seconds_range"][0] <= p["time"]["sweep_seconds"] <= p["time"]["sweep_seconds_range"][1]
    assert p["refusals"] == [] and p["recommendation"]["max_concurrent"] >= 1
    assert p["resources"]["trial_host_mb"] == 300  # the larger of the probe's two trials
    # the probe ran the space's most demanding trial: its largest batch, at the training size, 2 epochs
    (config, shape), = probed
    assert config["batch_size"] == 4 and config["epochs"] == 2 and config["image_height"] == 56
    assert shape["n_train"] == 4 * 3 and shape["grid"] == (4, 8) and shape["dtype"] == "float16"
    # at the sweep's 2 at once (as many as the cores hold): the probe's warm epochs against the model's own
    # projection of the same epoch give how much slower a sweep's trial-epoch runs here
    from sweeper.data.parallel import available_cores

    assert shape["concurrent"] == min(2, available_cores())
    b = p["bench"]
    probe_epoch = 12 * b["train_s_per_image"]["convnext_phase1/4"] + 4 * b["eval_s_per_image"]["convnext_phase1"]
    assert p["time"]["sweep_epoch_factor"] == pytest.approx(1.05 / probe_epoch, rel=0.02)
    cores = plan.contention(p["options"]["max_concurrent"], 1, available_cores(), "cpu")  # 1 unless oversubscribed
    assert p["time"]["contention"] == pytest.approx(cores * p["time"]["sweep_epoch_factor"], rel=0.02)
    assert set(p["bench"]["cold_epoch_s"]) == {"convnext_phase1/2", "convnext_phase1/4"}
    assert len(p["bench"]["load_average"]) == 2 and f"load {max(p['bench']['load_average']):.1f}" in table
    cold = np.mean(list(p["bench"]["cold_epoch_s"].values())) * p["time"]["contention"]
    assert p["time"]["cold_epoch_seconds"] == pytest.approx(cold, abs=0.01)
    # the sweep: the probe's measured start, each trial's set-up, then the expected epochs and cold extras
    t = p["time"]
    assert t["start_seconds"] == 20.0
    # 3 trials of 2 epochs at 2 at once: the lone third makes the sweep at least two trials long
    trial_s = 2 * t["trial_epoch_seconds"] + t["cold_epoch_seconds"] + plan.TRIAL_SETUP_S
    start = t["cache_seconds"] + 20.0
    assert start + trial_s - 0.2 <= t["sweep_seconds"] <= start + 2 * trial_s + 0.2
    assert t["sweep_seconds_range"][1] == pytest.approx(t["cache_seconds"] + 20.0 + 2 * trial_s, abs=0.2)
    # trial 0 runs at its own config (phase 1's batch 2), not at the mean of the batches the space can choose
    b = p["bench"]
    assert t["baseline_epoch_seconds"] == pytest.approx(t["contention"] * (
        4 * b["train_s_per_image"]["convnext_phase1/2"] + 2 * b["eval_s_per_image"]["convnext_phase1"]), abs=0.01)
    assert plan.plan_summary(p).startswith("plan: ") and "trial-epochs expected" in plan.plan_summary(p)
    # steady probe epochs: no warning; one that grew is printed as a row of its own
    assert p["warnings"] == [] and "warning" not in table
    grown = plan.format_plan({**p, "warnings": ["trial-epochs grew 2.9 s -> 13.6 s"]})
    assert any(ln.startswith("warning") and ln.endswith("2.9 s -> 13.6 s") for ln in grown.splitlines())
    # no cache yet: the probe trains on random tokens; once the sweep's cache exists, on its tokens
    assert shape["cached"] is None
    from sweeper.data.cache import load_train_data
    from sweeper.data.classes import LabelMode
    from sweeper.model.backbone import create_backbone

    load_train_data(data, create_backbone("random_vits14"), height=56, width=112, label_mode=LabelMode.PHASE1,
                    cache_root=tmp_path / "cache", dtype="float16", show_progress=False)
    probed.clear()
    assert main(["-q", "plan", "--data", str(data), "--backbone", "random_vits14", "--space", str(space),
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--out", str(out)]) == 0
    (_, shape), = probed
    assert sorted(shape["cached"]) == ["train_labels", "train_tokens", "val_labels", "val_tokens"]
    assert all(Path(v).is_file() for v in shape["cached"].values())


def test_a_cache_the_disk_cannot_hold_is_refused_before_any_entry_is_built(tiny, tmp_path, monkeypatch, capsys):
    from sweeper.cli.main import main
    from sweeper.data import cache as features

    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")

    def small_disk(path):
        real(path)  # the real one's checks: a missing path raises FileNotFoundError
        return usage(10**9, 10**9 - 10_000, 10_000)  # 10 kB free

    monkeypatch.setattr(features.shutil, "disk_usage", small_disk)
    data, space = tiny
    cache = tmp_path / "cache"
    rc = main(["-q", "search", "--data", str(data), "--backbone", "random_vits14", "--space", str(space),
               "--cache-dir", str(cache), "--device", "cpu", "--out", str(tmp_path / "runs"), "--name", "s"])
    err = capsys.readouterr().err
    assert rc == 2
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and str(cache) in line[0] and "its disk has 10.0 kB free" in line[0]  # not "0.00 GB"
    assert "Traceback" not in err
    assert not list(cache.rglob("*.npy"))


def test_search_refuses_a_share_the_plan_measured_too_small(tiny, tmp_path, monkeypatch, capsys):
    from fake_cuda import FakeCuda

    from sweeper.cli.main import main

    FakeCuda(monkeypatch, total_gib=6)
    data, space_file = tiny
    runs = tmp_path / "runs"
    runs.mkdir()
    args = argparse.Namespace(data=data, device="auto", backbone="random_vits14", cache_dtype="float16")
    space = load_space(space_file)
    crafted = {"key": plan.plan_key(args, space), "written_at": __import__("time").time(),
               "options": {"trials": 3, "max_concurrent": 4, "gpus_per_trial": 0.25},
               "resources": {"gpu_working_set_mb": 1200, "trial_host_mb": 600},
               "recommendation": {"gpus_per_trial": 0.5}, "time": {"sweep_seconds": 60},
               "trial_epochs": {"lower": 3, "expected": 4, "upper": 6}}
    (runs / plan.PLAN_FILE).write_text(json.dumps(crafted))
    rc = main(["-q", "search", "--data", str(data), "--backbone", "random_vits14", "--space", str(space_file),
               "--cache-dir", str(tmp_path / "cache"), "--out", str(runs), "--name", "s"])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and line[0].startswith("error: --gpus-per-trial 0.25: a trial needs ~1200 MB"), err
    assert not (tmp_path / "cache").exists()  # refused before any work


@pytest.mark.slow
def test_a_trial_process_is_measured_as_a_sweep_trial():
    from sweeper.search.plan_measure import trial_process
    from sweeper.training.config import TrainConfig

    # a local Ray started and shut down in a child process; the sweep's trainable, twice in each of two workers
    # at once, 2 epochs of the phase-1 head with Adam on a tiny grid
    config = TrainConfig(optimizer="adam", batch_size=2, epochs=2, train_metrics=False, image_height=56,
                         image_width=112).to_dict()
    out = trial_process(config, n_train=4, n_val=2, grid=(4, 8), embed_dim=384, height=56, width=112, concurrent=2)
    # two at once, each worker reused once: 4 trials
    assert len(out["trials"]) == 4 and all(len(t["epoch_seconds"]) == 2 for t in out["trials"])
    assert (out["n_train"], out["n_val"], out["concurrent"]) == (4, 2, 2)
    assert 0 < out["ray_start_s"] <= out["start_s"] < out["ray_start_s"] + out["fit_s"]
    # torch, Ray and its Tune session imported: hundreds of MB, private
    assert all(100 < t["peak_private_mb"] < 2000 for t in out["trials"]), out


def probe_with(*epoch_seconds, config=None):
    """A memory probe's result (`probe_trials`) whose trials took these epoch seconds."""
    return {"config": config or {"optimizer": "adamw", "lr": 8.2e-4, "batch_size": 2},
            "trials": [{"peak_private_mb": 500.0, "epoch_seconds": list(s)} for s in epoch_seconds]}


def test_a_trial_epoch_that_grows_over_the_probe_is_warned_about_naming_the_config():
    # issue 26: AdamW trials stalled on subnormals from their third epoch (2.9, 4.0, then 13.6-19.3 s)
    warnings = plan.epoch_growth_warnings(probe_with([6.0, 2.9, 4.0, 13.6], [6.1, 3.0, 3.1, 3.0]))
    assert len(warnings) == 1
    assert "2.9 s" in warnings[0] and "13.6 s" in warnings[0] and "4.7x" in warnings[0]
    assert "adamw" in warnings[0] and "lr 0.00082" in warnings[0] and "batch_size 2" in warnings[0]


def test_steady_or_noisy_probe_epochs_give_no_warning():
    assert plan.epoch_growth_warnings(probe_with([6.0, 2.9, 3.0, 3.1])) == []
    assert plan.epoch_growth_warnings(probe_with([6.0, 2.9, 9.0, 3.1])) == []  # one epoch slowed by other work
    assert plan.epoch_growth_warnings(probe_with([6.0, 2.9])) == []  # no later warm epoch to compare
    assert plan.epoch_growth_warnings({}) == []  # the probe could not run


def test_the_probe_trains_on_the_sweeps_cached_tokens_where_they_exist(tmp_path):
    from sweeper.search.plan_measure import probe_data

    rng = np.random.default_rng(0)
    paths = {}
    for split, n in (("train", 5), ("val", 3)):
        paths[f"{split}_tokens"] = tmp_path / f"{split}-tokens.npy"
        paths[f"{split}_labels"] = tmp_path / f"{split}-labels.npy"
        np.save(paths[f"{split}_tokens"], rng.normal(size=(n, 2, 3, 4)).astype(np.float16))
        np.save(paths[f"{split}_labels"], rng.integers(0, 10, (n, 28, 42), dtype=np.uint8))
    shape = dict(grid=(2, 3), embed_dim=4, height=28, width=42, dtype="float16")
    data, source = probe_data({k: str(v) for k, v in paths.items()}, 4, 2, **shape)
    assert source == "cached"
    assert np.array_equal(data.train.tokens.array, np.load(paths["train_tokens"])[:4])
    assert np.array_equal(data.val.labels, np.load(paths["val_labels"])[:2])
    # fewer cached images than the probe needs, or no cache: random tokens of the same shape
    data, source = probe_data({k: str(v) for k, v in paths.items()}, 6, 2, **shape)
    assert source == "random" and data.train.tokens.array.shape == (6, 2, 3, 4)
    data, source = probe_data(None, 4, 2, **shape)
    assert source == "random" and data.val.labels.shape == (2, 28, 42)
