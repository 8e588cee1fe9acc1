"""The figures and colour masks of `sweeper evaluate`, drawn from what it scored (`sweeper.evaluate.Evaluated`):
the organisers' colour masks, comparisons and per-class bars, and ours beside them. The evaluation calls this
through the CLI (`draw=`), so inference never imports presentation.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from sweeper.data.classes import CLASS_NAMES, NUM_CLASSES
from sweeper.files import shown
from sweeper.report.run_figures import (PALETTE, colorize, comparison_figure, organisers_comparison,
                                        organisers_per_class, per_class_figure)
from sweeper.report.summary import synthetic_tag
from sweeper.rundir.layout import (BAR_CHART, BAR_CHART_DETAIL, COLOR_DIR, COLOR_NAME, COMPARISON_NAME, COMPARISONS_DIR,
                                   DETAIL_NAME)

assert len(PALETTE) == NUM_CLASSES  # the organisers' mask colours: one per class


def draw_evaluation(ev: Any) -> None:
    """Write the colour masks, the first `ev.comparisons` side-by-side figures and the two per-class charts.

    `ev` is a `sweeper.evaluate.Evaluated` (not imported here: that module imports torch)."""
    out = ev.out
    for path, mask in zip(ev.image_paths, ev.pred):
        Image.fromarray(colorize(mask)).save(out / COLOR_DIR / COLOR_NAME.format(path.stem))
    tag = synthetic_tag(ev.synthetic)
    for i in range(ev.comparisons):
        image = ev.image(i)
        organisers_comparison(image, ev.labels[i], ev.pred[i], name=shown(ev.image_paths[i].name),
                              path=out / COMPARISONS_DIR / COMPARISON_NAME.format(i))
        comparison_figure(image, ev.labels[i], ev.pred[i], path=out / COMPARISONS_DIR / DETAIL_NAME.format(i),
                          title=f"{ev.label}: test image {shown(ev.image_paths[i].stem)}{tag}", class_names=CLASS_NAMES)
    phase1 = ev.metrics["phase1"]
    organisers_per_class(list(phase1["class_iou"].values()), phase1["iou"], path=out / BAR_CHART)
    per_class_figure(ev.metrics, out / BAR_CHART_DETAIL)
