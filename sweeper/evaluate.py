"""Test-set evaluation of a trained head: the counterpart of phase 1's companion test script.

`evaluate_run` takes a run folder (a `baseline` run or a `search` sweep), picks
its head (`sweeper.rundir.heads`: a sweep's best trial at its best epoch, or a named one), rebuilds the run's backbone,
runs the head over the test folder at the run's image size and label mode, and
writes (default folder RUN_DIR/evaluation/<baseline | trial-N>/):

    test_metrics.json                   phase-1 per-batch IoU/Dice/accuracy (batches of 2) and per-class
                                        IoU per batch, dataset-level mIoU and per-class IoU, by name;
                                        confusion matrix, class pixel counts, the run's validation scores
                                        of the same weights, which head and config, the data root and
                                        whether it is synthetic
    evaluation_metrics.txt              the organisers' test-script text file: phase-1 mean IoU and
                                        per-batch per-class IoU, in their layout
    masks/<name>_pred.png               predicted class ids 0-9, 8-bit, at the evaluation size (476x266)
    masks_color/<name>_pred_color.png   the same in the organisers' 10-colour PALETTE
    comparisons/sample_<k>_comparison.png   the organisers' figure: image / ground truth / prediction
    comparisons/sample_<k>_details.png      ours: the same with an error map and the class legend
    per_class_metrics.png               the organisers' chart: phase-1 per-class IoU bars and the mean
    per_class_test_vs_val.png           ours: per-class IoU on test (both flavours) next to validation:
                                        the domain shift, class by class

The file names are those of the organisers' test script, so tools written for
its output read ours.

The validation bars come from the scored head's own epoch, so both bar sets describe the same head,
and test_metrics.json says which epoch that is.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from sweeper import files
from sweeper.bar import progress_bar
from sweeper.data.cache import cached_labels, cached_tokens
from sweeper.data.cache_folder import default_cache_root
from sweeper.data.classes import CLASS_NAMES, NUM_CLASSES, ORGANISERS_CLASS_NAMES
from sweeper.data.dataset import Split, find_split
from sweeper.data.synth import generate as synth
from sweeper.data.tokens import ArrayTokens
from sweeper.errors import SweeperError
from sweeper.rundir import records
from sweeper.rundir.heads import RunHead, build_head, load_run_head
from sweeper.rundir.layout import (COLOR_DIR, COMPARISONS_DIR, EVALUATION_DIR, MASK_NAME, MASKS_DIR, METRICS_JSON,
                                   TEXT_FILE)
from sweeper.training.device import resolve_device
from sweeper.training.metrics import (Phase1Meter, class_iou, confusion_matrix, mean_iou, phase1_class_iou,
                                      pixel_accuracy)
from sweeper.training.train import TokenBatches, batch_order, eval_logits

log = logging.getLogger(__name__)

COMPARISONS = 5  # default number of side-by-side figures, for the first images (sorted by name)
PHASE1_BATCH = 2  # phase-1 scores are means over batches of 2, in file order
PREDICT_BATCH = 2  # images per head forward: the trainer's eval batch, so val predictions match it bit for bit


@torch.inference_mode()
def predict(head: nn.Module, tokens: np.ndarray, *, size: tuple[int, int], device: torch.device,
            amp: bool = False, batch_size: int = PREDICT_BATCH, show_progress: bool = True) -> np.ndarray:
    """Argmax class ids (N, H, W) uint8 of the head on (N, h, w, C) tokens, by training's inference loop."""
    head = head.to(device)
    batches = TokenBatches(ArrayTokens(tokens), device)
    out = np.empty((len(tokens), *size), dtype=np.uint8)
    with progress_bar(total=len(tokens), desc="predicting test masks", enabled=show_progress) as bar:
        for idx, scores, _ in eval_logits(head, batches, batch_order(len(tokens), batch_size, None), size=size,
                                          amp=amp):
            out[idx] = scores.argmax(1).to(torch.uint8).cpu().numpy()
            bar.update(len(idx))
    return out


def score(pred: np.ndarray, labels: np.ndarray, *, num_classes: int = NUM_CLASSES,
          batch_size: int = PHASE1_BATCH) -> dict[str, Any]:
    """Phase-1 per-batch IoU/Dice/accuracy and per-class IoU (file order, batches of `batch_size`), as the
    organisers' test script computes them, and the dataset-level scores."""
    if pred.shape != labels.shape:
        raise ValueError(f"predictions {pred.shape} and labels {labels.shape} differ in shape")
    meter = Phase1Meter(num_classes)
    batch_cms = []
    for idx in batch_order(len(pred), batch_size, None):
        batch_cms.append(confusion_matrix(torch.from_numpy(pred[idx]), torch.from_numpy(labels[idx]),
                                          num_classes).numpy())
        meter.add(batch_cms[-1])
    cm = meter.cm if meter.cm is not None else np.zeros((num_classes, num_classes), np.int64)
    names = CLASS_NAMES[:num_classes]
    s = meter.summary("test")
    per_batch = phase1_class_iou(batch_cms, num_classes)
    return {
        "phase1": {"iou": s["test_iou"], "dice": s["test_dice"], "acc": s["test_acc"],
                   "class_iou": {n: (None if math.isnan(v) else float(v)) for n, v in zip(names, per_batch)},
                   "batch_size": batch_size, "batches": len(meter.ious)},
        "dataset": {"miou": mean_iou(cm), "acc": pixel_accuracy(cm),
                    "class_iou": {n: (None if math.isnan(v) else float(v)) for n, v in zip(names, class_iou(cm))}},
        "class_pixels": {"target": dict(zip(names, cm.sum(1).tolist())),
                         "predicted": dict(zip(names, cm.sum(0).tolist()))},
        "confusion_matrix": cm.tolist(),  # rows: target class, columns: predicted class
    }


def evaluation_text(mean_iou: float, class_iou: dict[str, float | None]) -> str:
    """The organisers' test-script evaluation_metrics.txt byte for byte: mean IoU, then per-class IoU ('N/A'
    where absent), each class under their name (class 0 'Background')."""
    theirs = dict(zip(CLASS_NAMES, ORGANISERS_CLASS_NAMES))
    lines = ["EVALUATION RESULTS", "=" * 50, f"Mean IoU:          {mean_iou:.4f}", "=" * 50, "",
             "Per-Class IoU:", "-" * 40]
    lines += [f"  {theirs.get(name, name):<20}: {'N/A' if v is None or math.isnan(v) else f'{v:.4f}'}"
              for name, v in class_iou.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the whole evaluation


@dataclass(frozen=True)
class Evaluated:
    """What an evaluation drew its figures from: the head's predictions beside the test labels and images."""

    out: Path  # the evaluation folder
    label: str  # which head: 'baseline' or 'trial-N'
    image_paths: tuple[Path, ...]  # the test images, in file order
    labels: np.ndarray  # (N, H, W) class ids at the evaluation size
    pred: np.ndarray  # (N, H, W) predicted class ids
    height: int
    width: int
    synthetic: bool
    comparisons: int  # side-by-side figures to draw, for the first images
    metrics: dict[str, Any]  # test_metrics.json as written

    def image(self, i: int) -> np.ndarray:
        """Test image `i` as the head saw it (bilinear resize), but un-normalised for display."""
        with Image.open(self.image_paths[i]) as img:
            return np.asarray(img.convert("RGB").resize((self.width, self.height), Image.BILINEAR))


def _clear_pngs(folder: Path) -> None:
    """Remove masks/figures of an earlier evaluation into the same folder, so no stale file survives."""
    if folder.is_dir():
        for p in folder.glob("*.png"):
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _rebuild_backbone(run: RunHead, device: torch.device):
    from sweeper.model.backbone import create_backbone

    rec = run.inputs.get("backbone") or {}
    if not rec.get("name"):
        raise SweeperError(f"{run.run_dir}: the run records no backbone name")
    backbone = create_backbone(rec["name"], weights=rec.get("weights_path"))
    digest = rec.get("weights_digest")
    if digest and digest != backbone.weights_digest:
        raise SweeperError(f"backbone {rec['name']}: its weights (digest {backbone.weights_digest}) are not the ones "
                           f"the run was trained on (digest {digest}); the head only fits those")
    return backbone.to(device)


def evaluate_run(run_dir: Path, *, data: Path, trial: str | int = "best", out: Path | None = None,
                 device: str = "auto", cache_root: Path | None = None, show_progress: bool = True,
                 allow_unknown: bool = False, comparisons: int = COMPARISONS, epoch: str = "best",
                 draw: Callable[[Evaluated], None] | None = None) -> Path:
    """Score a run's head on a test folder; write metrics and masks, and with `draw` (the report's
    `draw_evaluation`, passed by the CLI: inference does not import presentation) the colour masks and figures;
    return the output folder.

    `epoch`: a sweep trial's best-epoch head ('best') or its latest ('last'); see `load_run_head`."""
    started = time.perf_counter()
    run = load_run_head(Path(run_dir), trial=trial, epoch=epoch)
    cfg = run.config
    out = files.ensure_writable_dir(Path(out) if out is not None else run.run_dir / EVALUATION_DIR / run.label)
    split: Split = find_split(data, "test")
    synthetic = synth.is_synthetic(data)
    trained_synthetic = (run.inputs.get("data") or {}).get("synthetic")
    if trained_synthetic is not None and bool(trained_synthetic) != synthetic:
        log.warning("the head was trained on %s data but the test data is %s", "SYNTHETIC" if trained_synthetic
                    else "real", "SYNTHETIC" if synthetic else "real")
    log.info("evaluating %s of %s on %d test images in %s%s", run.label, run.run_dir, len(split), split.root,
             " (SYNTHETIC data)" if synthetic else "")

    dev = resolve_device(device)
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    height, width = cfg.image_height, cfg.image_width
    backbone = _rebuild_backbone(run, dev)
    dtype = (run.inputs.get("cache") or {}).get("dtype") or "float32"  # the tokens the head was trained on
    tokens, _ = cached_tokens(split, backbone, cache_root=cache_root, height=height, width=width, dtype=dtype,
                              show_progress=show_progress)
    labels = cached_labels(split, cache_root=cache_root, height=height, width=width, mode=cfg.label_mode,
                           allow_unknown=allow_unknown)
    head = build_head(run, in_channels=backbone.embed_dim)
    pred = predict(head, tokens, size=(height, width), device=dev, amp=cfg.amp, batch_size=cfg.eval_batch_size,
                   show_progress=show_progress)
    scores = score(pred, labels)

    names = [p.stem for p in split.image_paths]
    for sub in (MASKS_DIR, COLOR_DIR, COMPARISONS_DIR):
        _clear_pngs(out / sub)
    for name, mask in zip(names, pred):
        Image.fromarray(mask).save(out / MASKS_DIR / MASK_NAME.format(name))
    log.info("wrote %d predicted masks to %s", len(pred), out / MASKS_DIR)

    metrics = {
        "run": {"dir": str(run.run_dir.resolve()), "kind": run.kind, "label": run.label, "trial": run.trial,
                "trial_id": run.trial_id, "weights_file": str(run.weights_file.resolve()), **run.selection},
        "config": cfg.to_dict(),
        "backbone": {**(run.inputs.get("backbone") or {}), "weights_digest": backbone.weights_digest},
        "data": {"root": str(Path(data).resolve()), "test_folder": str(split.root.resolve()), "images": len(split),
                 "synthetic": synthetic, "trained_on": (run.inputs.get("data") or {}).get("root"),
                 "trained_on_synthetic": trained_synthetic},
        "evaluation": {"height": height, "width": width, "label_mode": cfg.label_mode.value, "device": str(dev),
                       "cache_root": str(cache_root), "token_dtype": dtype},
        **{k: scores[k] for k in ("phase1", "dataset")},
        "validation": run.validation,
        **{k: scores[k] for k in ("class_pixels", "confusion_matrix")},
        "class_names": list(CLASS_NAMES),
        "seconds": round(time.perf_counter() - started, 3),
        "versions": records.versions(),
    }
    files.write_json(out / METRICS_JSON, metrics)
    files.write_text_atomic(out / TEXT_FILE, evaluation_text(scores["phase1"]["iou"], scores["phase1"]["class_iou"]))

    if draw is not None:
        draw(Evaluated(out=out, label=run.label, image_paths=tuple(split.image_paths), labels=labels, pred=pred,
                       height=height, width=width, synthetic=synthetic, comparisons=min(comparisons, len(split)),
                       metrics=json.loads((out / METRICS_JSON).read_text())))
    log.info("test %s: phase-1 IoU %.4f, Dice %.4f, accuracy %.4f; dataset mIoU %.4f%s", run.label,
             metrics["phase1"]["iou"], metrics["phase1"]["dice"], metrics["phase1"]["acc"],
             metrics["dataset"]["miou"], " (SYNTHETIC data)" if synthetic else "")
    log.info("wrote %s, %s%s", out / METRICS_JSON, out / TEXT_FILE, " and the figures" if draw is not None else "")
    return out
