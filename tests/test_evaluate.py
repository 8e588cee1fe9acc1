"""Test-set evaluation on hand-made run folders and a tiny synthetic test set (no Ray)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweeper import evaluate as ev
from sweeper import files
from sweeper.cli.evaluate import summary_lines
from sweeper.data.classes import CLASS_NAMES, NUM_CLASSES
from sweeper.data.dataset import find_split, load_split_labels
from sweeper.data.synth import generate as synth
from sweeper.errors import SweeperError
from sweeper.model.head import create_head
from sweeper.report.evaluation import draw_evaluation
from sweeper.report.run_figures import colorize
from sweeper.rundir import heads, layout
from sweeper.rundir.heads import load_run_head
from sweeper.training.config import TrainConfig

SMALL = dict(image_height=56, image_width=112, device="cpu")  # 4x8 token grid: fast on CPU
BACKBONE = {"name": "random_vits14", "weights_path": None}


@pytest.fixture(scope="module")
def backbone():
    """The run's backbone, built once: a random ViT-S takes seconds to initialise."""
    from sweeper.model.backbone import create_backbone

    return create_backbone("random_vits14")


@pytest.fixture(autouse=True)
def shared_backbone(backbone, monkeypatch):
    """evaluate_run rebuilds the run's backbone by name; hand it the one built for this module."""
    import sweeper.model.backbone

    def create(name, *, weights=None, seed=0):
        assert name == "random_vits14" and weights is None
        return backbone

    monkeypatch.setattr(sweeper.model.backbone, "create_backbone", create)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "set", train=2, val=2, test=3, size=(96, 54))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def test_labels(dataset) -> np.ndarray:
    return load_split_labels(find_split(dataset, "test"), height=56, width=112, mode=TrainConfig().label_mode)


def constant_head(k: int) -> dict[str, torch.Tensor]:
    """A head state whose classifier ignores its input and always votes for class k."""
    torch.manual_seed(0)
    head = create_head("convnext_phase1", in_channels=384, num_classes=NUM_CLASSES)
    with torch.no_grad():
        head.classifier.weight.zero_()
        head.classifier.bias.fill_(-10.0)
        head.classifier.bias[k] = 10.0
    return head.state_dict()


def val_record(epoch: int, class_iou: list[float | None]) -> dict:
    return {"epoch": epoch, "val_iou": 0.25, "val_miou": 0.2, "val_class_iou": class_iou}


def make_baseline(folder: Path, state: dict, *, history=(), backbone=BACKBONE) -> Path:
    folder.mkdir(parents=True)
    files.write_json(folder / layout.CONFIG_FILE, {
        "command": "baseline", "config": TrainConfig(**SMALL).to_dict(), "backbone": backbone,
        "data": {"root": "/somewhere/train-set", "synthetic": True}, "cache": {"dtype": "float32"}})
    torch.save(state, folder / layout.HEAD_FILE)
    for r in history:
        files.append_jsonl(folder / layout.METRICS_FILE, r)
    return folder


def make_sweep(folder: Path) -> Path:
    """Trials 0 (class 8, checkpoint with history), 1 (class 3, checkpoint only), 2 (best score, no checkpoint)."""
    ray = folder / "ray"
    ray.mkdir(parents=True)
    files.write_json(folder / "sweep.json", {"backbone": BACKBONE, "data": {"root": "/x", "synthetic": True},
                                            "cache": {"dtype": "float32"}})
    (folder / "trials.csv").write_text(
        "trial,trial_id,status,baseline,lr,best_val_iou,best_epoch\n"
        "0,aaaa0000,TERMINATED,True,0.0001,0.30,1\n"
        "1,bbbb1111,TERMINATED,False,5e-05,0.50,2\n"
        "2,cccc2222,ERROR,False,0.01,0.90,1\n")
    class_cols = ",".join(f"val_class_iou/{n}" for n in CLASS_NAMES)
    (folder / "history.csv").write_text(
        f"trial,trial_id,epoch,val_iou,val_miou,{class_cols}\n"
        f"1,bbbb1111,1,0.4,0.3,{','.join(['0.1'] * 10)}\n"
        f"1,bbbb1111,2,0.5,0.35,{','.join(['0.2'] * 9)},\n")  # last class empty: NaN in the CSV
    for tid, n, lr, head_class, history in (("aaaa0000", 1, 1e-4, 8, [val_record(1, [0.5] * 10)]),
                                            ("bbbb1111", 2, 5e-5, 3, None), ("cccc2222", 3, 1e-2, None, None)):
        tdir = ray / f"trial_main_{tid}_{n}_lr={lr}_2026-01-01_00-00-00"
        tdir.mkdir()
        files.write_json(tdir / "config.json", {"trial_id": tid, "number": n - 1, "started": float(n),
                                               "config": {"lr": lr, "epochs": 2, "threads": 1, **SMALL,
                                                          "trial_number": n - 1}})
        if head_class is not None:
            (tdir / "checkpoint_000001").mkdir()
            state = {"head": constant_head(head_class), "step": 4}
            if history:
                state["history"] = history
            torch.save(state, tdir / "checkpoint_000001" / "state.pt")
    return folder


def phase1_iou_by_hand(labels: np.ndarray, k: int, batch: int = 2) -> float:
    """Mean over batches of 2 of: the nan-mean over classes of I/U when every pixel is predicted k."""
    scores = []
    for lo in range(0, len(labels), batch):
        y = labels[lo:lo + batch]
        present = np.unique(y)
        # class k: I = its pixels, U = all pixels; other present classes: I = 0; absent ones: NaN (dropped)
        per_class = [np.mean(y == k) if c == k else 0.0 for c in present]
        if k not in present:
            per_class.append(0.0)  # k predicted but absent: I = 0, U > 0
        scores.append(np.mean(per_class))
    return float(np.mean(scores))


# --------------------------------------------------------------------------- pure helpers


def test_score_on_a_hand_made_mask():
    target = np.array([[[0, 0], [1, 1]], [[1, 1], [1, 1]]], dtype=np.uint8)
    pred = np.array([[[0, 1], [1, 1]], [[1, 1], [1, 1]]], dtype=np.uint8)
    s = ev.score(pred, target, num_classes=3, batch_size=1)
    # dataset: class 0 I=1 U=2, class 1 I=6 U=7, class 2 absent -> NaN
    assert s["dataset"]["class_iou"]["Flowers/bg"] == pytest.approx(0.5)
    assert s["dataset"]["class_iou"]["Trees"] == pytest.approx(6 / 7)
    assert s["dataset"]["class_iou"]["Lush Bushes"] is None
    assert s["dataset"]["miou"] == pytest.approx((0.5 + 6 / 7) / 2)
    # phase 1, batches of one: image 0 mean(1/2, 2/3), image 1 only class 1 with IoU 1
    assert s["phase1"]["iou"] == pytest.approx(((0.5 + 2 / 3) / 2 + 1.0) / 2)
    assert s["phase1"]["acc"] == pytest.approx((0.75 + 1.0) / 2) and s["phase1"]["batches"] == 2
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 6, 0], [0, 0, 0]]
    # phase-1 per-batch per-class (the organisers' test script): each class's IoU averaged over the batches
    # where it is not absent. Class 0 only appears in image 0 (1/2); class 1 is 2/3 then 1; class 2 nowhere.
    assert s["phase1"]["class_iou"]["Flowers/bg"] == pytest.approx(0.5)
    assert s["phase1"]["class_iou"]["Trees"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert s["phase1"]["class_iou"]["Lush Bushes"] is None


# The organisers' test-script palette, class by class (public copies of their test_segmentation.py agree).
ORGANISERS_PALETTE = [(0, 0, 0), (34, 139, 34), (0, 255, 0), (210, 180, 140), (139, 90, 43), (128, 128, 0),
                      (139, 69, 19), (128, 128, 128), (160, 82, 45), (135, 206, 235)]


def test_colorize_uses_the_organisers_palette():
    mask = np.arange(10, dtype=np.uint8).reshape(2, 5)
    rgb = colorize(mask)
    assert rgb.shape == (2, 5, 3) and rgb.dtype == np.uint8
    assert [tuple(c) for c in rgb.reshape(10, 3).tolist()] == ORGANISERS_PALETTE


def test_evaluation_text_is_the_organisers_layout():
    names = ["Flowers/bg", "Trees", "Ground Clutter"]
    text = ev.evaluation_text(0.41234, dict(zip(names, [0.5, None, 0.123456])))
    assert text == ("EVALUATION RESULTS\n"
                    "==================================================\n"
                    "Mean IoU:          0.4123\n"
                    "==================================================\n"
                    "\n"
                    "Per-Class IoU:\n"
                    "----------------------------------------\n"
                    "  Background          : 0.5000\n"  # their name for class 0 (ours: Flowers/bg)
                    "  Trees               : N/A\n"
                    "  Ground Clutter      : 0.1235\n")


# --------------------------------------------------------------------------- baseline runs


def test_constant_head_scores_the_class_share(tmp_path, dataset, cache, test_labels):
    k = 8  # Landscape: present in every synthetic test scene
    run = make_baseline(tmp_path / "base", constant_head(k), history=[val_record(1, [0.1] * 10),
                                                                      val_record(2, [0.3] * 9 + [None])])
    out = ev.evaluate_run(run, data=dataset, cache_root=cache, device="cpu", show_progress=False,
                          draw=draw_evaluation)  # as `sweeper evaluate` calls it

    assert out == run / "evaluation" / "baseline"
    names = ["000000", "000001", "000002"]
    for name in names:  # the organisers' names: masks/<name>_pred.png, masks_color/<name>_pred_color.png
        mask = np.asarray(Image.open(out / "masks" / f"{name}_pred.png"))
        assert mask.shape == (56, 112) and mask.dtype == np.uint8 and (mask == k).all()
        color = np.asarray(Image.open(out / "masks_color" / f"{name}_pred_color.png"))
        assert (color == (160, 82, 45)).all()  # Landscape in the organisers' palette: sienna
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{n}_pred.png" for n in names]
    assert sorted(p.name for p in (out / "comparisons").iterdir()) == [  # fewer than 5 test images
        f"sample_{k}_{kind}.png" for k in range(3) for kind in ("comparison", "details")]  # theirs and ours
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "evaluation_metrics.txt", "per_class_metrics.png", "per_class_test_vs_val.png", "test_metrics.json"]
    assert (out / "per_class_test_vs_val.png").stat().st_size > 10_000
    assert Image.open(out / "per_class_metrics.png").info["dpi"] == pytest.approx((150, 150), abs=0.1)  # theirs

    m = json.loads((out / "test_metrics.json").read_text())
    assert {"run", "config", "backbone", "data", "evaluation", "phase1", "dataset", "validation", "class_pixels",
            "confusion_matrix", "class_names"} <= set(m)
    share = float(np.mean(test_labels == k))
    iou = m["dataset"]["class_iou"]
    assert iou["Landscape"] == pytest.approx(share)
    present = set(np.unique(test_labels).tolist())
    for c, name in enumerate(CLASS_NAMES):
        if c != k:
            assert iou[name] == (0.0 if c in present else None)  # missed entirely, or absent from both
    assert m["dataset"]["acc"] == pytest.approx(share)
    assert m["dataset"]["miou"] == pytest.approx(share / len(present | {k}))
    assert m["phase1"]["iou"] == pytest.approx(phase1_iou_by_hand(test_labels, k))
    batch_acc = [np.mean(test_labels[:2] == k), np.mean(test_labels[2:] == k)]  # batches of 2: [0, 1], [2]
    assert m["phase1"]["acc"] == pytest.approx(np.mean(batch_acc))
    assert m["phase1"]["batch_size"] == 2 and m["phase1"]["batches"] == 2
    # per-batch per-class: class k scores its pixel share in each batch, averaged; a class present in some
    # batch is missed there (0); a class in no batch and never predicted is absent (None)
    assert m["phase1"]["class_iou"][CLASS_NAMES[k]] == pytest.approx(np.mean(batch_acc))
    for c, name in enumerate(CLASS_NAMES):
        if c != k:
            assert m["phase1"]["class_iou"][name] == (0.0 if c in present else None)
    text = (out / "evaluation_metrics.txt").read_text()
    assert text.startswith(f"EVALUATION RESULTS\n{'=' * 50}\nMean IoU:          {m['phase1']['iou']:.4f}\n")
    assert f"  Landscape           : {np.mean(batch_acc):.4f}\n" in text and "  Sky                 : " in text
    assert "\n  Background          : " in text and "Flowers/bg" not in text  # their name; ours in the JSON
    assert m["class_names"][0] == "Flowers/bg" and "Flowers/bg" in m["dataset"]["class_iou"]
    assert m["class_pixels"]["predicted"]["Landscape"] == test_labels.size
    assert m["data"] == {"root": str(dataset.resolve()), "test_folder": str((dataset / "test").resolve()),
                         "images": 3, "synthetic": True, "trained_on": "/somewhere/train-set",
                         "trained_on_synthetic": True}
    assert m["run"]["kind"] == "baseline" and m["run"]["trial"] is None
    assert m["config"]["image_height"] == 56 and m["evaluation"]["label_mode"] == "phase1"
    # the final head is the last epoch's: its validation scores are the ones shown
    assert m["validation"]["epoch"] == 2 and m["validation"]["class_iou"]["Sky"] is None
    assert m["validation"]["class_iou"]["Trees"] == 0.3


def test_rerun_replaces_outputs_and_out_is_honoured(tmp_path, dataset, cache):
    run = make_baseline(tmp_path / "base", constant_head(9))
    out = tmp_path / "elsewhere"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "stale.png").write_bytes(b"old")
    assert ev.evaluate_run(run, data=dataset / "test", out=out, cache_root=cache, device="cpu",
                           show_progress=False, comparisons=1, draw=draw_evaluation) == out
    assert sorted(p.name for p in (out / "comparisons").iterdir()) == ["sample_0_comparison.png",
                                                                       "sample_0_details.png"]
    assert not (out / "masks" / "stale.png").exists()
    m = json.loads((out / "test_metrics.json").read_text())
    assert m["validation"] is None and m["data"]["synthetic"] is True  # a test folder inside a synthetic set
    assert not (run / "evaluation").exists()


def test_scores_on_val_folder_reproduce_the_training_record(tmp_path, dataset, cache, backbone):
    """A real trained head scored on its own val split gives the val IoU that training recorded."""
    from sweeper.data.cache import load_train_data
    from sweeper.training.train import train

    cfg = TrainConfig(**SMALL, epochs=2, optimizer="adamw", lr=1e-3)
    data = load_train_data(dataset, backbone, height=56, width=112, label_mode=cfg.label_mode, cache_root=cache,
                           show_progress=False)
    result = train(cfg, data)
    run = tmp_path / "trained"
    run.mkdir()
    files.write_json(run / layout.CONFIG_FILE, {"config": cfg.to_dict(), "backbone": {
        **BACKBONE, "weights_digest": backbone.weights_digest}, "data": {"synthetic": True}, "cache": {}})
    heads.save_head(run / layout.HEAD_FILE, result.head_state)
    for r in result.history:
        files.append_jsonl(run / layout.METRICS_FILE, r)
    out = ev.evaluate_run(run, data=dataset / "val", cache_root=cache, device="cpu", show_progress=False,
                          comparisons=0)
    m = json.loads((out / "test_metrics.json").read_text())
    final = result.history[-1]
    assert m["phase1"]["iou"] == pytest.approx(final["val_iou"], abs=1e-12)
    assert m["phase1"]["dice"] == pytest.approx(final["val_dice"], abs=1e-12)
    assert m["dataset"]["miou"] == pytest.approx(final["val_miou"], abs=1e-12)
    assert list(m["dataset"]["class_iou"].values()) == pytest.approx(
        [math.nan if v is None else v for v in final["val_class_iou"]], nan_ok=True)


def test_backbone_other_than_the_runs_is_refused(tmp_path, dataset, cache):
    other = {**BACKBONE, "weights_digest": "0123456789abcdef"}
    run = make_baseline(tmp_path / "base", constant_head(1), backbone=other)
    with pytest.raises(SweeperError, match="not the ones the run was trained on"):
        ev.evaluate_run(run, data=dataset, cache_root=cache, device="cpu", show_progress=False)


def test_not_a_run_folder(tmp_path, dataset):
    (tmp_path / "random").mkdir()
    with pytest.raises(SweeperError, match="not a run folder"):
        ev.evaluate_run(tmp_path / "random", data=dataset)


def test_baseline_has_no_trials(tmp_path, dataset):
    run = make_baseline(tmp_path / "base", constant_head(1))
    with pytest.raises(SweeperError, match="applies to sweeps only"):
        ev.evaluate_run(run, data=dataset, trial="3")


# --------------------------------------------------------------------------- sweeps


def test_sweep_best_is_the_highest_score(tmp_path, dataset, cache, test_labels):
    sweep = make_sweep(tmp_path / "sweep")
    table = sweep / "trials.csv"
    table.write_text("".join(table.read_text().splitlines(keepends=True)[:3]))  # trial 2 (no checkpoint) gone
    out = ev.evaluate_run(sweep, data=dataset, cache_root=cache, device="cpu", show_progress=False,
                          comparisons=0)
    assert out == sweep / "evaluation" / "trial-1"  # 0.50 beats trial 0's 0.30
    assert (np.asarray(Image.open(out / "masks" / "000000_pred.png")) == 3).all()
    m = json.loads((out / "test_metrics.json").read_text())
    assert m["run"]["trial"] == 1 and m["run"]["trial_id"] == "bbbb1111" and m["run"]["by"] == "best_val_iou"
    assert m["run"]["best_val_iou"] == 0.5 and m["config"]["lr"] == 5e-5 and m["config"]["image_width"] == 112
    assert m["dataset"]["class_iou"]["Dry Grass"] == pytest.approx(float(np.mean(test_labels == 3)))
    # no history in the checkpoint: validation comes from history.csv, the trial's last epoch
    v = m["validation"]
    assert v["source"] == "history.csv" and v["epoch"] == 2 and v["val_iou"] == 0.5
    assert v["class_iou"]["Trees"] == 0.2 and v["class_iou"]["Sky"] is None


def test_sweep_trial_by_number_uses_its_checkpoint_history(tmp_path, dataset, cache):
    sweep = make_sweep(tmp_path / "sweep")
    out = ev.evaluate_run(sweep, data=dataset, trial="0", cache_root=cache, device="cpu", show_progress=False,
                          comparisons=0)
    assert out.name == "trial-0"
    assert (np.asarray(Image.open(out / "masks" / "000002_pred.png")) == 8).all()
    m = json.loads((out / "test_metrics.json").read_text())
    assert m["validation"]["source"] == "checkpoint_000001/state.pt" and m["validation"]["epoch"] == 1
    assert m["run"]["baseline"] is True and m["run"]["by"] == "trial number"


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_best_trial_without_its_checkpoint_is_refused_naming_the_file_and_a_trial_that_works(tmp_path, dataset,
                                                                                          capsys, command):
    # trial 2 scores best (0.90) but its checkpoint is gone: scoring trial 1 instead would be another head than
    # the one the report calls best, so refuse and say which --trial would work
    from sweeper.cli.main import main

    sweep = make_sweep(tmp_path / "sweep")
    (tdir,) = (sweep / "ray").glob("*_cccc2222_*")
    extra = ["--data", str(dataset)] if command == "evaluate" else ["--out", str(tmp_path / "export")]
    assert main([command, str(sweep), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err == (f"error: {tdir}/checkpoint_*/state.pt: missing, so the best trial (2, best_val_iou 0.9000) "
                   f"cannot be scored; --trial 1 is the best trial with a checkpoint\n")
    assert not (sweep / "evaluation").exists() and not (tmp_path / "export").exists()


def test_best_trial_without_its_folder_names_the_folder(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    (tdir,) = (sweep / "ray").glob("*_cccc2222_*")
    shutil.rmtree(tdir)
    with pytest.raises(SweeperError) as err:
        load_run_head(sweep)
    assert str(err.value) == (f"{sweep / 'ray'}: no folder of trial 2 (Ray trial id cccc2222), so the best trial "
                              f"(2, best_val_iou 0.9000) cannot be scored; "
                              f"--trial 1 is the best trial with a checkpoint")


@pytest.mark.parametrize("trial, why", [("2", "trial 2 has no checkpoint"), ("7", "trial 7 does not exist"),
                                        ("x", "'x' is not a trial number")])
def test_sweep_bad_trial_lists_the_valid_ids(tmp_path, dataset, trial, why):
    sweep = make_sweep(tmp_path / "sweep")
    with pytest.raises(SweeperError, match=why) as err:
        ev.evaluate_run(sweep, data=dataset, trial=trial)
    assert "trials with a checkpoint: 0, 1 (or 'best')" in str(err.value)
    assert "\n" not in str(err.value)


def test_sweep_scores_the_best_epochs_head_by_default_and_says_which_epoch(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    (ckpt,) = (sweep / "ray").glob("*_bbbb1111_*/checkpoint_000001/state.pt")
    history = [{**val_record(1, [0.3] * 10), "val_iou": 0.5}, {**val_record(2, [0.1] * 10), "val_iou": 0.4}]
    torch.save({"head": constant_head(3), "step": 8, "history": history,
                "best": {"epoch": 1, "val_iou": 0.5, "head": constant_head(7)}}, ckpt)
    best = load_run_head(sweep, trial=1)
    assert torch.equal(best.state["classifier.bias"], constant_head(7)["classifier.bias"])
    assert best.selection["epoch"] == 1 and best.selection["weights"] == "best epoch"
    assert best.selection["checkpoint_epoch"] == 2
    assert best.validation["epoch"] == 1 and best.validation["class_iou"]["Trees"] == 0.3
    last = load_run_head(sweep, trial=1, epoch="last")
    assert torch.equal(last.state["classifier.bias"], constant_head(3)["classifier.bias"])
    assert last.selection["epoch"] == 2 and last.validation["epoch"] == 2
    assert last.validation["class_iou"]["Trees"] == 0.1
    with pytest.raises(SweeperError, match="epoch: expected one of best, last"):
        load_run_head(sweep, trial=1, epoch="first")


def test_summary_lines_label_both_per_class_flavours():
    m = {"run": {"label": "baseline"}, "data": {"images": 4, "synthetic": False},
         "phase1": {"iou": 0.3, "dice": 0.4, "acc": 0.5, "class_iou": {"Trees": 0.25, "Sky": None}},
         "dataset": {"miou": 0.35, "class_iou": {"Trees": 0.2, "Sky": 0.9}}, "validation": None}
    lines = summary_lines(m)
    assert lines[1].split() == ["per-class", "IoU", "test,", "phase-1", "per-batch", "test,", "dataset", "val,",
                                "dataset"]
    assert lines[2].split() == ["Trees", "0.250", "0.200", "n/a"]
    assert lines[3].split() == ["Sky", "n/a", "0.900", "n/a"]
