"""`sweeper export`: the chosen head as files that load elsewhere (phase 1's head into its class, strictly)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sweeper.cli.main import main
from sweeper.files import write_json
from sweeper.model.head import ConvNeXtPhase1Head, create_head
from sweeper.rundir.layout import CONFIG_FILE, HEAD_FILE
from sweeper.training.config import TrainConfig


def baseline_folder(folder: Path, head_name: str, seed: int = 3) -> dict[str, torch.Tensor]:
    """A finished baseline run folder holding a seeded head of `head_name`; returns that head's state."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    state = create_head(head_name, in_channels=384, num_classes=10).state_dict()
    torch.save(state, folder / HEAD_FILE)
    write_json(folder / CONFIG_FILE, {"command": "baseline", "config": TrainConfig(head=head_name).to_dict(),
                                      "backbone": {"name": "random_vits14", "trained": False},
                                      "data": {"root": "/x", "synthetic": True}})
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_iou": 0.25}) + "\n")
    return state


def test_a_phase1_head_exports_to_the_organisers_class_strictly(tmp_path, capsys):
    source = baseline_folder(tmp_path / "run", "convnext_phase1")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    head = ConvNeXtPhase1Head(384, 10)
    head.load_state_dict(torch.load(tmp_path / "out" / HEAD_FILE, weights_only=True), strict=True)
    assert all(torch.equal(head.state_dict()[k], v) for k, v in source.items())
    info = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
    assert (info["head"], info["parameters"], info["val_iou"], info["val_epoch"]) == ("convnext_phase1", 2_432_778,
                                                                                      0.25, 1)
    assert info["organisers_test_script"] is True and info["synthetic_data"] is True
    assert "organisers' test script loads it" in capsys.readouterr().out


def test_another_head_exports_with_the_line_that_builds_it(tmp_path):
    baseline_folder(tmp_path / "run", "convnext_up")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    info = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
    assert info["organisers_test_script"] is False
    scope: dict = {"torch": torch}
    exec(info["build"].replace(repr(HEAD_FILE), repr(str(tmp_path / "out" / HEAD_FILE))), scope)  # the line, as given
    tokens = torch.randn(1, 3, 5, 384)
    torch.manual_seed(3)
    original = create_head("convnext_up", in_channels=384, num_classes=10).eval()
    assert torch.equal(scope["head"].eval()(tokens), original(tokens))


def test_export_never_replaces_an_earlier_export(tmp_path, capsys):
    baseline_folder(tmp_path / "run", "linear")
    out = tmp_path / "out"
    out.mkdir()
    (out / HEAD_FILE).write_bytes(b"earlier")
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and HEAD_FILE in err
    assert (out / HEAD_FILE).read_bytes() == b"earlier"


@pytest.mark.parametrize("args, message", [(["--trial", "3"], "a baseline run has one head"),
                                            ([], "not a run folder")])
def test_export_errors_are_one_line(tmp_path, capsys, args, message):
    if args:
        baseline_folder(tmp_path / "run", "linear")
    else:
        (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "out").exists()
