"""`sweeper evaluate`: score a run's head on the test images (`sweeper.evaluate`), draw its figures
(`sweeper.report.evaluation`) and print the scores in a few lines.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any, Sequence

from sweeper.errors import SweeperError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sweeper.evaluate import evaluate_run
    from sweeper.files import read_json
    from sweeper.report.evaluation import draw_evaluation
    from sweeper.rundir.layout import METRICS_JSON

    data = args.data
    if data is None:  # the run's own data root: the synthetic default and `synth` sets carry a test/ split
        info = next((read_json(args.run / f) for f in ("sweep.json", "config.json")
                     if (args.run / f).is_file()), None)
        if info is None:
            raise SweeperError(f"{args.run}: not a run folder (no sweep.json or config.json); pass --data TEST_DIR")
        data = Path(info["data"]["root"])
    out = evaluate_run(args.run, data=data, trial=args.trial, out=args.out, device=args.device,
                       cache_root=args.cache_dir, show_progress=not args.quiet,
                       allow_unknown=args.allow_unknown_ids, comparisons=args.samples, epoch=args.epoch,
                       draw=draw_evaluation)
    for line in summary_lines(read_json(out / METRICS_JSON)):
        print(line)
    print(f"outputs in {out}")
    return 0


def summary_lines(metrics: dict[str, Any]) -> Sequence[str]:
    """A test_metrics.json dict as a few lines for the CLI to print."""
    from sweeper.report.summary import fmt, synthetic_tag  # here: the report draws with matplotlib

    p, d, v = metrics["phase1"], metrics["dataset"], metrics.get("validation")
    short = functools.partial(fmt, digits=3, missing="n/a")  # the CLI's lines: 3 decimals
    run = metrics["run"]
    head = f" (head of epoch {run['epoch']}, its {run.get('weights', 'kept')})" if run.get("epoch") is not None else ""
    lines = [f"{run['label']}{head} on {metrics['data']['images']} test images"
             f"{synthetic_tag(metrics['data']['synthetic'])}: phase-1 IoU {short(p['iou'])}, Dice {short(p['dice'])}, "
             f"accuracy {short(p['acc'])}; dataset mIoU {short(d['miou'])}"]
    if v:
        lines.append(f"validation (epoch {v.get('epoch')}): IoU {short(v.get('val_iou'))}, "
                     f"mIoU {short(v.get('val_miou'))}")
    width = max(len(n) for n in d["class_iou"])
    per_batch = p.get("class_iou") or {}
    lines.append(f"  {'per-class IoU':<{width}}  {'test, phase-1 per-batch':>23}  {'test, dataset':>13}  "
                 f"{'val, dataset':>12}")
    for n, t in d["class_iou"].items():
        val = short(v["class_iou"].get(n)) if v else "n/a"
        lines.append(f"  {n:<{width}}  {short(per_batch.get(n)):>23}  {short(t):>13}  {val:>12}")
    return lines
