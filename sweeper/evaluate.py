"""Test-set evaluation of a trained head: the counterpart of phase 1's companion test script.

`evaluate_run` takes a run folder (a `baseline` run or a `search` sweep), picks
its head (a sweep's best trial or a named one), rebuilds the run's backbone,
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
    comparisons/sample_<k>_comparison.png   image / ground truth / prediction / errors, first k images
    per_class_metrics.png               per-class IoU on test (both flavours) next to validation: the
                                        domain shift, class by class

The file names are those of the organisers' test script, so tools written for
its output read ours.

A sweep's checkpoint of each trial keeps its latest state (for resume) and the
head of its best epoch (the epoch its trials.csv score comes from); that best
head is scored by default (`epoch="last"` scores the latest). The validation
bars come from the scored head's own epoch, so both bar sets describe the same
head, and test_metrics.json says which epoch that is.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from sweeper import files, results, runs, synth
from sweeper.config import TrainConfig
from sweeper.data import CLASS_NAMES, NUM_CLASSES, Split, find_split
from sweeper.errors import SweeperError
from sweeper.features import cached_labels, cached_tokens, default_cache_root
from sweeper.head import create_head
from sweeper.metrics import Phase1Meter, class_iou, confusion_matrix, mean_iou, phase1_class_iou, pixel_accuracy
from sweeper.progress import progress_bar
from sweeper.report.run_figures import PALETTE, colorize, comparison_figure, per_class_figure
from sweeper.report.summary import fmt, synthetic_tag
from sweeper.device import resolve_device
from sweeper.tokens import ArrayTokens
from sweeper.train import TokenBatches, batch_order, eval_logits
from sweeper.results import (BAR_CHART, BEST_KEY, COLOR_DIR, COLOR_NAME, COMPARISON_NAME, COMPARISONS_DIR,
                             EVALUATION_DIR, EXPERIMENT_DIR, HISTORY_CSV, MASK_NAME, MASKS_DIR, METRICS_JSON,
                             STATE_FILE, SWEEP_FILE, TEXT_FILE, TRIAL_CONFIG, TRIALS_CSV)
from sweeper.results import TrialRecord, latest_checkpoint, trial_groups

log = logging.getLogger(__name__)

COMPARISONS = 5  # default number of side-by-side figures, for the first images (sorted by name)
PHASE1_BATCH = 2  # phase-1 scores are means over batches of 2, in file order
PREDICT_BATCH = 2  # images per head forward: the trainer's eval batch, so val predictions match it bit for bit
BEST_METRIC = "best_val_iou"  # trials.csv column that 'best' maximises
EPOCH_CHOICES = ("best", "last")  # which of a sweep trial's kept heads to score: its best epoch's or its latest

assert len(PALETTE) == NUM_CLASSES  # the organisers' mask colours: one per class


@dataclass(frozen=True)
class RunHead:
    """A run folder's chosen head and what is known about how it was trained."""

    run_dir: Path
    kind: str  # 'baseline' or 'sweep'
    label: str  # 'baseline' or 'trial-N': the default output subfolder
    trial: int | None  # the trials.csv 'trial' number (sweeps only)
    trial_id: str | None  # Ray's trial id (sweeps only)
    weights_file: Path  # segmentation_head.pth or a checkpoint's state.pt
    config: TrainConfig
    inputs: dict[str, Any]  # the run's 'backbone', 'data' and 'cache' records
    validation: dict[str, Any] | None  # val scores of these weights: source, epoch, val_iou, val_miou, class_iou
    selection: dict[str, Any]  # how the head was chosen (sweeps: best_val_iou, best_epoch, ...)
    state: dict[str, torch.Tensor] = field(repr=False)


# --------------------------------------------------------------------------- picking the head


def _load_state(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file: all mean the same to the user
        raise SweeperError(f"{path}: not a readable torch checkpoint ({type(e).__name__})") from None


def _config(values: dict[str, Any], source: str) -> TrainConfig:
    """A TrainConfig from recorded values, ignoring keys that are not config fields (Ray adds none today)."""
    known = {k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig.from_dict(known, source=source)


def _validation(record: dict[str, Any], source: str) -> dict[str, Any]:
    """An epoch record (metrics.jsonl / checkpoint history) as the validation summary."""
    values = record.get("val_class_iou") or [None] * NUM_CLASSES
    if isinstance(values, dict):
        values = [values.get(n) for n in CLASS_NAMES]
    return {"source": source, "epoch": record.get("epoch"), "val_iou": record.get("val_iou"),
            "val_miou": record.get("val_miou"),
            "class_iou": {n: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
                          for n, v in zip(CLASS_NAMES, values)}}


def _baseline_head(run_dir: Path, trial: str | int) -> RunHead:
    if str(trial) != "best":
        raise SweeperError(f"{run_dir}: a baseline run has one head; a trial ({trial}) applies to sweeps only")
    record = files.read_json(run_dir / results.CONFIG_FILE)
    if "config" not in record or "backbone" not in record:
        raise SweeperError(f"{run_dir / results.CONFIG_FILE}: no 'config' and 'backbone' records in it")
    head_file = run_dir / results.HEAD_FILE
    if not head_file.is_file():
        raise SweeperError(f"{run_dir}: no {results.HEAD_FILE} (did the run finish?)")
    metrics = run_dir / results.METRICS_FILE
    history = files.read_jsonl(metrics) if metrics.is_file() else []
    # Phase 1 saves the final head, so its validation scores are the last epoch's.
    validation = _validation(history[-1], results.METRICS_FILE) if history else None
    return RunHead(run_dir=run_dir, kind="baseline", label="baseline", trial=None, trial_id=None,
                   weights_file=head_file, config=_config(record["config"], str(run_dir / results.CONFIG_FILE)),
                   inputs={k: record.get(k) or {} for k in ("backbone", "data", "cache")},
                   validation=validation, selection={"by": "the run's final head"},
                   state=_load_state(head_file))


def _history_validation(run_dir: Path, trial: int, epoch: int | None) -> dict[str, Any] | None:
    """A trial's val scores at `epoch` (its last when None) from history.csv."""
    path = run_dir / HISTORY_CSV
    if not path.is_file():
        return None
    df = files.read_csv(path)
    if df.empty:
        return None
    if not {"trial", "epoch"} <= set(df.columns):
        raise SweeperError(f"{path}: missing column(s) trial and epoch")
    rows = df[df["trial"] == trial]
    if epoch is not None:
        rows = rows[rows["epoch"] == epoch]
    if rows.empty:
        return None
    row = rows.sort_values("epoch").iloc[-1].to_dict()
    prefix = "val_class_iou/"
    values = [row.get(prefix + n) for n in CLASS_NAMES]
    record = {"epoch": int(row["epoch"]), "val_iou": row.get("val_iou"), "val_miou": row.get("val_miou"),
              "val_class_iou": [None if v is None or pd.isna(v) else float(v) for v in values]}
    return _validation(record, HISTORY_CSV)


def _sweep_head(run_dir: Path, trial: str | int, epoch: str = "best") -> RunHead:
    sweep = files.read_json(run_dir / SWEEP_FILE)
    table = files.read_csv(run_dir / TRIALS_CSV)
    missing = {"trial", "trial_id"} - set(table.columns)
    if missing:
        raise SweeperError(f"{run_dir / TRIALS_CSV}: missing column(s) {', '.join(sorted(missing))}")
    exp_dir = run_dir / EXPERIMENT_DIR
    # the trials' own records (config.json), never Ray's pickled state: a results folder is data, not code
    groups = trial_groups(exp_dir) if exp_dir.is_dir() else {}
    checkpoints: dict[int, tuple[dict[str, Any], TrialRecord, Path]] = {}
    for row in table.to_dict("records"):
        found = latest_checkpoint(groups.get(int(row["trial"]), []))
        if found is not None:
            checkpoints[int(row["trial"])] = (row, *found)
    valid = ", ".join(str(t) for t in sorted(checkpoints)) or "none"
    if str(trial) == "best":
        if not checkpoints:
            raise SweeperError(f"{run_dir}: no trial has a checkpoint under {exp_dir}")

        def score(t: int) -> tuple[float, int]:
            v = checkpoints[t][0].get(BEST_METRIC)
            return (-math.inf if v is None or pd.isna(v) else float(v), -t)  # ties: the lower trial number

        number = max(checkpoints, key=score)
    else:
        try:
            number = int(str(trial))
        except ValueError:
            raise SweeperError(f"trial '{trial}' is not a trial number; trials with a checkpoint: {valid} "
                               f"(or 'best')") from None
        if number not in checkpoints:
            why = "has no checkpoint" if number in set(table["trial"].astype(int)) else "does not exist"
            raise SweeperError(f"{run_dir}: trial {number} {why}; trials with a checkpoint: {valid} (or 'best')")
    row, tdir, state_file = checkpoints[number]
    state = _load_state(state_file)
    if not isinstance(state, dict) or "head" not in state:
        raise SweeperError(f"{state_file}: no 'head' state dict in this checkpoint")
    history = state.get("history") or []
    last_epoch = history[-1].get("epoch") if history else None
    best = state.get(BEST_KEY)
    use_best = epoch == "best" and isinstance(best, dict) and "head" in best
    if epoch == "best" and not use_best:
        log.info("trial %d: its checkpoint keeps no best-epoch head (written before best heads were kept): "
                 "scoring its latest epoch", number)
    head_state, head_epoch = (best["head"], int(best["epoch"])) if use_best else (state["head"], last_epoch)
    source = f"{state_file.parent.name}/{STATE_FILE}"
    record = next((r for r in history if r.get("epoch") == head_epoch), None)
    # the validation figures are those of the scored head's own epoch
    validation = (_validation(record, source) if record is not None
                  else _history_validation(run_dir, number, head_epoch))
    best_epoch = row.get("best_epoch")
    selection = {"by": "best_val_iou" if str(trial) == "best" else "trial number",
                 BEST_METRIC: row.get(BEST_METRIC),
                 "best_epoch": None if best_epoch is None or pd.isna(best_epoch) else int(best_epoch),
                 "weights": "best epoch" if use_best else "latest epoch",
                 "epoch": head_epoch if head_epoch is not None else (validation or {}).get("epoch"),
                 "checkpoint_epoch": last_epoch if last_epoch is not None else (validation or {}).get("epoch"),
                 "status": row.get("status"), "baseline": bool(row.get("baseline", False))}
    if selection["best_epoch"] is not None and selection["epoch"] not in (None, selection["best_epoch"]):
        log.info("trial %d: scoring epoch %s (%s); its best val IoU was at epoch %s",
                 number, selection["epoch"], selection["weights"], selection["best_epoch"])
    return RunHead(run_dir=run_dir, kind="sweep", label=f"trial-{number}", trial=number,
                   trial_id=str(row["trial_id"]), weights_file=state_file,
                   config=_config(tdir.config, str(tdir.path / TRIAL_CONFIG)),
                   inputs={k: sweep.get(k) or {} for k in ("backbone", "data", "cache")},
                   validation=validation, selection=selection, state=head_state)


def load_run_head(run_dir: Path, *, trial: str | int = "best", epoch: str = "best") -> RunHead:
    """The head of a baseline run folder, or of a sweep's trial ('best' = highest best_val_iou with a checkpoint).

    For a sweep trial, `epoch` picks its best epoch's head ('best', the epoch its trials.csv score is from)
    or its latest ('last'). A baseline run keeps only its final head, as phase 1 does.
    """
    if epoch not in EPOCH_CHOICES:
        raise SweeperError(f"epoch: expected one of {', '.join(EPOCH_CHOICES)}, got {epoch!r}")
    run_dir = Path(run_dir)
    if (run_dir / SWEEP_FILE).is_file() and (run_dir / TRIALS_CSV).is_file():
        return _sweep_head(run_dir, trial, epoch)
    if (run_dir / results.CONFIG_FILE).is_file():
        return _baseline_head(run_dir, trial)
    raise SweeperError(f"{run_dir}: not a run folder (expected {results.CONFIG_FILE} + {results.HEAD_FILE} from "
                       f"'baseline', or {SWEEP_FILE} + {TRIALS_CSV} from 'search')")


# --------------------------------------------------------------------------- predicting and scoring


def build_head(run: RunHead, *, in_channels: int) -> nn.Module:
    """The run's head architecture with its saved weights, in eval mode."""
    head = create_head(run.config.head, in_channels=in_channels, num_classes=NUM_CLASSES)
    try:
        head.load_state_dict(run.state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise SweeperError(f"{run.weights_file}: weights do not fit head '{run.config.head}' on a "
                           f"{in_channels}-channel backbone ({first})") from None
    return head.eval()


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
    """The organisers' test-script evaluation_metrics.txt: mean IoU, then per-class IoU ('N/A' where absent)."""
    lines = ["EVALUATION RESULTS", "=" * 50, f"Mean IoU:          {mean_iou:.4f}", "=" * 50, "",
             "Per-Class IoU:", "-" * 40]
    lines += [f"  {name:<20}: {'N/A' if v is None or math.isnan(v) else f'{v:.4f}'}" for name, v in class_iou.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the whole evaluation


def _display_image(path: Path, *, height: int, width: int) -> np.ndarray:
    """A test image as the head saw it (bilinear resize), but un-normalised for display."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((width, height), Image.BILINEAR))


def _clear_pngs(folder: Path) -> None:
    """Remove masks/figures of an earlier evaluation into the same folder, so no stale file survives."""
    if folder.is_dir():
        for p in folder.glob("*.png"):
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _rebuild_backbone(run: RunHead, device: torch.device):
    from sweeper.backbone import create_backbone

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
                 allow_unknown: bool = False, comparisons: int = COMPARISONS, epoch: str = "best") -> Path:
    """Score a run's head on a test folder; write metrics, masks and figures; return the output folder.

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
        Image.fromarray(colorize(mask)).save(out / COLOR_DIR / COLOR_NAME.format(name))
    log.info("wrote %d predicted masks to %s and %s", len(pred), out / MASKS_DIR, out / COLOR_DIR)

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
        "versions": runs.versions(),
    }
    files.write_json(out / METRICS_JSON, metrics)
    files.write_text_atomic(out / TEXT_FILE, evaluation_text(scores["phase1"]["iou"], scores["phase1"]["class_iou"]))

    tag = synthetic_tag(synthetic)
    for i in range(min(comparisons, len(split))):
        image = _display_image(split.image_paths[i], height=height, width=width)
        comparison_figure(image, labels[i], pred[i], path=out / COMPARISONS_DIR / COMPARISON_NAME.format(i),
                          title=f"{run.label}: test image {names[i]}{tag}", class_names=CLASS_NAMES)
    per_class_figure(json.loads((out / METRICS_JSON).read_text()), out / BAR_CHART)
    log.info("test %s: phase-1 IoU %.4f, Dice %.4f, accuracy %.4f; dataset mIoU %.4f%s", run.label,
             metrics["phase1"]["iou"], metrics["phase1"]["dice"], metrics["phase1"]["acc"],
             metrics["dataset"]["miou"], tag)
    log.info("wrote %s, %s, %s, %s/", out / METRICS_JSON, out / TEXT_FILE, out / BAR_CHART, out / COMPARISONS_DIR)
    return out


def summary_lines(metrics: dict[str, Any]) -> Sequence[str]:
    """A test_metrics.json dict as a few lines for the CLI to print."""
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
