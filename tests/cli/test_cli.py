"""The command line as a user meets it: exit codes, one-line errors, the files a run writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, write_pair
from PIL import Image

from sweeper.cli.main import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def synth_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "set"
    assert main(["-q", "synth", str(root), "--train", "2", "--val", "1", "--test", "1"]) == 0
    return root


def test_synth_then_baseline_writes_every_phase1_file(tmp_path, synth_set, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "baseline", "--data", str(synth_set), "--epochs", "2", "--out", str(out),
                                "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    for name in ("evaluation_metrics.txt", "training_curves.png", "iou_curves.png", "dice_curves.png",
                 "all_metrics_curves.png", "metrics.jsonl", "config.json", "segmentation_head.pth"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and len(lines[0]["val_class_iou"]) == 10
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["optimizer"] == "sgd" and cfg["config"]["lr"] == 1e-4 and cfg["config"]["batch_size"] == 2
    assert cfg["data"]["synthetic"] is True and cfg["backbone"]["name"] == "random_vits14"
    assert cfg["backbone"]["trained"] is False and cfg["data"]["train_images"] == 2
    text = (out / "evaluation_metrics.txt").read_text()
    assert f"Final Val IoU:        {lines[-1]['val_iou']:.4f}" in text
    assert "Per-Epoch History:" in text and text.count("\n2        ") == 1
    head = torch.load(out / "segmentation_head.pth", weights_only=True)
    assert head["classifier.weight"].shape == (10, 128, 1, 1)
    assert head["classifier.weight"].abs().sum() > 0 and torch.isfinite(head["classifier.weight"]).all()
    for name in ("training_curves.png", "iou_curves.png", "dice_curves.png", "all_metrics_curves.png"):
        with Image.open(out / name) as im:
            pixels = np.asarray(im.convert("L"))
        assert pixels.min() < 128 < pixels.max(), name  # curves and labels drawn, not an empty canvas
    assert "SYNTHETIC" in err and "best val IoU" in stdout


def _bad(tmp_path: Path, case: str) -> tuple[list[str], str]:
    data = tmp_path / "data"
    write_pair(data / "train", "0000.png")
    write_pair(data / "val", "0000.png")
    args = ["baseline", "--data", str(data), "--backbone", "random_vits14", "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache")]
    img = data / "train" / "Color_Images" / "0000.png"
    mask = data / "train" / "Segmentation" / "0000.png"
    if case == "missing_folder":
        args[2] = str(tmp_path / "nope")
        return args, "nope: --data folder does not exist"
    if case == "empty_folder":
        img.unlink()
        return args, "no .png images"
    if case == "image_without_mask":
        mask.unlink()
        return args, f"{img}: image has no mask"
    if case == "mask_other_size":
        Image.fromarray(np.full((27, 48), 100, np.uint16)).save(mask)
        return args, f"{mask}: mask is 48x27 but its image is 96x54"
    if case == "corrupt_png":
        img.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
        return args, f"{img}: not a readable PNG"
    if case == "unknown_ids":
        raw = np.full((54, 96), 100, np.uint16)
        raw[:3, :5] = 4242
        Image.fromarray(raw).save(mask)
        return args, f"{mask}: 15 pixels have unknown raw id 4242;"
    if case == "wrong_weights":
        from sweeper.model.backbone import BACKBONES
        from sweeper.model.vit import build_vit
        path = tmp_path / "vitb.pth"
        torch.save(build_vit(BACKBONES["dinov2_vitb14"]).state_dict(), path)
        args[3:5] = ["--backbone", "dinov2_vits14", "--weights", str(path)]
        return args, f"{path}"
    if case == "unknown_backbone":
        args[3:5] = ["--backbone", "vit_huge_nope"]
        return args, "unknown backbone 'vit_huge_nope'"
    if case == "unwritable_out":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        args[args.index("--out") + 1] = str(blocker / "sub")
        return args, "output folder is not writable"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_folder", "empty_folder", "image_without_mask", "mask_other_size",
                                  "corrupt_png", "unknown_ids", "wrong_weights", "unknown_backbone",
                                  "unwritable_out"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    args, expected = _bad(tmp_path, case)
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_wrong_weights_name_the_missing_keys(tmp_path, capsys):
    args, _ = _bad(tmp_path, "wrong_weights")
    _, _, err = run_cli(capsys, *args)
    assert "missing" in err or "shape" in err


def test_an_error_keeps_what_an_earlier_run_wrote(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    args, _ = _bad(tmp_path, "corrupt_png")
    assert run_cli(capsys, *args)[0] == 2
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_search_input_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "search_spaces" / "smoke.yaml").read_text().replace("mode: max", "mode: sideways"))
    code, _, err = run_cli(capsys, "search", "--space", str(bad), "--out", str(tmp_path))
    assert code == 2 and str(bad) in err and "mode" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "search", "--resume", "--out", str(tmp_path))
    assert code == 2 and "--resume needs --name" in err
    code, _, err = run_cli(capsys, "search", "--resume", "--name", "ghost", "--out", str(tmp_path))
    assert code == 2 and "no sweep to resume" in err


def test_real_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sweeper", "baseline", "--data", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in proc.stderr


def test_logging_follows_sys_stderr_after_the_old_one_is_closed(capsys, monkeypatch):
    import io
    import logging

    from sweeper.cli.main import _StderrHandler

    old = io.TextIOWrapper(io.BytesIO())  # like pytest's capture: flushing it once closed raises
    monkeypatch.setattr(sys, "stderr", old)
    handler = _StderrHandler(sys.stderr)  # made while `old` is stderr, as in an earlier test's main()
    old.close()  # pytest closes a test's capture; a notebook its cell's stream
    monkeypatch.undo()
    handler.emit(logging.LogRecord("sweeper", logging.WARNING, __file__, 1, "still works", None, None))
    assert "still works" in capsys.readouterr().err


@pytest.mark.slow
def test_search_report_confirm_evaluate_end_to_end(tmp_path, synth_set, capsys, monkeypatch):
    import pandas as pd

    pytest.importorskip("ray")
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "results" / "e2e"
    try:
        code, _, err = run_cli(capsys, "-q", "search", "--data", str(synth_set), "--space",
                               str(ROOT / "search_spaces" / "smoke.yaml"), "--trials", "2", "--name", "e2e",
                               "--out", str(tmp_path / "results"), "--max-concurrent", "1")
        assert code == 0, err
        trials = pd.read_csv(run / "trials.csv")
        assert trials.trial.tolist() == [0, 1] and bool(trials.baseline[0]) and (trials.epochs_run == 2).all()

        code, out, err = run_cli(capsys, "-q", "report", str(run))
        assert code == 0, err
        summary = (run / "report" / "summary.md").read_text()
        assert out.strip() == f"report: {run / 'report' / 'index.html'}"
        assert f"{trials.best_val_iou.max():.4f}" in summary  # the winner's score is what the report shows

        code, out, err = run_cli(capsys, "-q", "confirm", str(run), "--top", "1", "--seeds", "2")
        assert code == 0, err
        confirm = pd.read_csv(run / "confirm.csv")
        assert sorted(zip(confirm.trial, confirm.seed)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        # seed 0 of each config is the sweep's own trial again, to the last digit
        for t in (0, 1):
            again = confirm[(confirm.trial == t) & (confirm.seed == 0)].best_val_iou.iloc[0]
            assert again == pytest.approx(trials.best_val_iou[t], abs=1e-6)
        assert "gain counts as real" in out

        code, out, err = run_cli(capsys, "-q", "evaluate", str(run), "--samples", "0")
        assert code == 0, err
        best = trials.sort_values(["best_val_iou", "trial"], ascending=[False, True]).iloc[0]
        m = json.loads((run / "evaluation" / f"trial-{best.trial}" / "test_metrics.json").read_text())
        assert m["run"]["trial"] == best.trial and m["run"]["epoch"] == best.best_epoch
        assert m["validation"]["epoch"] == best.best_epoch  # the scored head's own epoch
        assert f"trial-{best.trial} (head of epoch {best.best_epoch}, its best epoch) on 1 test images" in out
        assert m["validation"]["val_iou"] == pytest.approx(best.best_val_iou, abs=1e-9)
        assert 0.0 <= m["dataset"]["miou"] <= 1.0
    finally:
        import ray
        ray.shutdown()


def test_search_caches_float16_by_default_and_baseline_float32():
    # float16 tokens leave every trial's score unchanged (scripts/bench/cache_dtype.py) at half the memory;
    # the baseline reproduces phase 1 and keeps float32.
    from sweeper.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["search"]).cache_dtype == "float16"
    assert parser.parse_args(["baseline"]).cache_dtype == "float32"
    assert parser.parse_args(["search", "--cache-dtype", "float32"]).cache_dtype == "float32"


ODD = b"\xff\xfe-odd.png"  # a valid Linux file name that is not UTF-8 text


@pytest.mark.slow  # trains
def test_a_file_name_that_is_not_utf8_goes_through_every_command(tmp_path, capsys):
    """One image/mask pair of each split named with bytes that are not UTF-8 (a `synth` set renamed): baseline,
    report, evaluate (its figures name the image) and export run, and every text file they write is UTF-8."""
    import os

    root = tmp_path / "set"
    assert main(["-q", "synth", str(root), "--train", "2", "--val", "1", "--test", "2", "--size", "224x126"]) == 0
    for split in ("train", "val", "test"):
        for sub in ("Color_Images", "Segmentation"):
            folder = root / split / sub
            first = sorted(folder.iterdir())[0]
            os.rename(first, folder / os.fsdecode(ODD))
    run, cache = tmp_path / "base", tmp_path / "cache"
    steps = [("baseline", "--data", str(root), "--epochs", "1", "--out", str(run), "--cache-dir", str(cache)),
             ("report", str(run)),
             ("evaluate", str(run), "--samples", "2", "--cache-dir", str(cache)),
             ("export", str(run), "--out", str(tmp_path / "exported"))]
    for step in steps:
        code, out, err = run_cli(capsys, "-q", *step)
        assert code == 0 and "Traceback" not in err, (step[0], err[-2000:])
    evaluated = run / "evaluation" / "baseline"
    assert (evaluated / "masks").is_dir() and any(os.fsencode(p.name).startswith(b"\xff\xfe")
                                                  for p in (evaluated / "masks").iterdir())
    for path in [*run.rglob("*.json"), *run.rglob("*.txt"), *run.rglob("*.md"), *run.rglob("*.html"),
                 *run.rglob("*.jsonl"), *run.rglob("*.csv")]:
        path.read_text(encoding="utf-8")  # strict: a name written as its raw bytes would fail here


@pytest.mark.parametrize("layout", ["empty folder", "splits without images"])
def test_data_without_images_is_refused_before_the_backbone_is_resolved(tmp_path, capsys, monkeypatch, layout):
    """A --data folder without synth.json picks dinov2_vits14 (weights downloaded, 85 MB): a folder with no
    images must say so first, not report a failed download (or download first)."""
    import sweeper.model.backbone as backbone

    data = tmp_path / "data"
    data.mkdir()
    if layout == "splits without images":
        for split in ("train", "val"):
            (data / split / "Color_Images").mkdir(parents=True)
            (data / split / "Segmentation").mkdir(parents=True)
    built = []
    real = backbone.create_backbone
    monkeypatch.setattr(backbone, "create_backbone", lambda *a, **kw: built.append(a) or real(*a, **kw))
    code, _, err = run_cli(capsys, "baseline", "--data", str(data), "--out", str(tmp_path / "out"),
                           "--cache-dir", str(tmp_path / "cache"))
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(line) == 1 and str(data) in line[0], err
    assert "weights" not in line[0] and built == []
