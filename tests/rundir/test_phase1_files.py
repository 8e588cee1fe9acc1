"""Phase 1's own output files as the organisers' scripts write them: their text, sizes and figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sweeper.data.classes import CLASS_NAMES

RECORDS = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_iou": 0.1 * e, "val_iou": 0.09 * e,
            "train_dice": 0.2 * e, "val_dice": 0.19 * e, "train_acc": 0.3 * e, "val_acc": 0.29 * e}
           for e in (1, 2)]


def test_test_script_text_names_class_0_background_as_theirs_does():
    from sweeper.evaluate import evaluation_text

    ious = {n: 0.1 * i for i, n in enumerate(CLASS_NAMES)} | {CLASS_NAMES[6]: None}
    text = evaluation_text(0.25, ious)
    assert text == ("EVALUATION RESULTS\n" + "=" * 50 + "\nMean IoU:          0.2500\n" + "=" * 50 + "\n\n"
                    "Per-Class IoU:\n" + "-" * 40 + "\n"
                    "  Background          : 0.0000\n  Trees               : 0.1000\n"
                    "  Lush Bushes         : 0.2000\n  Dry Grass           : 0.3000\n"
                    "  Dry Bushes          : 0.4000\n  Ground Clutter      : 0.5000\n"
                    "  Logs                : N/A\n  Rocks               : 0.7000\n"
                    "  Landscape           : 0.8000\n  Sky                 : 0.9000\n")


def test_training_curves_are_saved_at_matplotlibs_default_100_dpi(tmp_path):
    from sweeper.report.run_figures import phase1_plots

    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in RECORDS)
    sizes = {p.name: Image.open(p).size for p in phase1_plots(tmp_path)}
    assert sizes == {"training_curves.png": (1200, 500), "iou_curves.png": (1200, 500),
                     "dice_curves.png": (1200, 500), "all_metrics_curves.png": (1200, 1000)}


def test_their_comparison_figure_is_three_panels_titled_with_the_sample(tmp_path):
    from sweeper.report.run_figures import PALETTE, organisers_comparison

    target = np.zeros((14, 28), np.uint8)
    target[:, 14:] = 9
    pred = np.full_like(target, 9)
    image = np.full((14, 28, 3), 200, np.uint8)
    path = tmp_path / "sample_0_comparison.png"
    fig = organisers_comparison(image, target, pred, name="000001.png", path=path)
    assert tuple(fig.get_size_inches()) == (15.0, 5.0)
    assert [ax.get_title() for ax in fig.axes] == ["Input Image", "Ground Truth", "Prediction"]
    assert fig._suptitle.get_text() == "Sample: 000001.png"
    shown = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert (np.asarray(shown[0]) == image).all()
    assert (np.asarray(shown[1])[:, 20] == PALETTE[9]).all() and (np.asarray(shown[1])[:, 0] == PALETTE[0]).all()
    assert (np.asarray(shown[2]) == PALETTE[9]).all()
    assert Image.open(path).info["dpi"] == pytest.approx((150, 150), abs=0.1)


def test_their_per_class_chart_is_one_palette_bar_per_class_and_a_red_mean(tmp_path):
    from matplotlib.colors import to_rgba

    from sweeper.report.run_figures import PALETTE, organisers_per_class

    ious = [0.5, None, 0.25] + [0.1] * 7
    path = tmp_path / "per_class_metrics.png"
    fig = organisers_per_class(ious, 0.3125, path=path)
    (ax,) = fig.axes
    bars = ax.patches
    assert [b.get_height() for b in bars] == pytest.approx([0.5, 0.0, 0.25] + [0.1] * 7)  # N/A drawn as 0
    assert [b.get_facecolor() for b in bars] == [to_rgba(c / 255) for c in PALETTE]
    assert ax.get_title() == "Per-Class IoU (Mean: 0.3125)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Background", *CLASS_NAMES[1:]]
    (mean,) = [ln for ln in ax.get_lines() if ln.get_label() == "Mean"]  # their legend text
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Mean"]
    assert mean.get_color() == "red" and list(mean.get_ydata()) == [0.3125, 0.3125]
    assert tuple(fig.get_size_inches()) == (10.0, 6.0) and ax.get_ylim() == (0.0, 1.0)  # their figsize=(10, 6)
    assert Image.open(path).info["dpi"] == pytest.approx((150, 150), abs=0.1)


@pytest.mark.parametrize("name, size, panels", [
    ("training_curves.png", (12.0, 5.0), 2), ("iou_curves.png", (12.0, 5.0), 2),
    ("dice_curves.png", (12.0, 5.0), 2), ("all_metrics_curves.png", (12.0, 10.0), 4),
])
def test_their_training_curves_are_drawn_as_their_script_draws_them(name, size, panels):
    """plt.plot(history[key]): x is the list index 0..n-1, no markers, matplotlib's default style and colours."""
    from matplotlib import rcParamsDefault

    from sweeper.report.run_figures import organisers_training_figure

    three = RECORDS + [{**RECORDS[1], "epoch": 3}]
    fig = organisers_training_figure(three, name)
    assert tuple(fig.get_size_inches()) == size and len(fig.axes) == panels
    default_colours = rcParamsDefault["axes.prop_cycle"].by_key()["color"]
    for ax in fig.axes:
        lines = ax.get_lines()
        assert lines
        for k, line in enumerate(lines):
            assert list(line.get_xdata()) == [0, 1, 2]
            assert line.get_marker() in ("None", "", None)
            assert line.get_color() == default_colours[k]  # C0, C1: not seaborn's 'deep' palette
        assert ax.get_facecolor() == (1.0, 1.0, 1.0, 1.0) and ax.get_xlabel() == "Epoch"
        assert all(g.get_visible() for g in ax.get_xgridlines())  # their plt.grid(True)


def test_phase1_plots_writes_their_figures_under_their_names(tmp_path):
    """The files in the run folder are the organisers' drawing; ours (epochs 1..n, markers) is the report's."""
    from sweeper.report.run_figures import phase1_plots

    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in RECORDS)
    paths = phase1_plots(tmp_path)
    plain = Image.open(tmp_path / "training_curves.png").convert("RGB")
    colours = {c for _, c in plain.getcolors(1 << 20)}
    assert (0x1F, 0x77, 0xB4) in colours  # matplotlib's default C0 line
    assert (0x4C, 0x72, 0xB0) not in colours  # seaborn's 'deep' blue, the house style
    assert len(paths) == 4
