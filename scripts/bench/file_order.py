"""How much phase 1's per-batch scores depend on file order: one head, one split, sorted vs shuffled.

    python scripts/bench/file_order.py RUN_DIR [--data ROOT] [--split val] [--orders 20] [--seed 0]

Phase 1 lists files in the file system's (unsorted) order; we sort them. Predictions are per image,
so the order changes no prediction and no dataset-level score, but it changes which images share
a batch of 2, and phase 1's scores are means of per-batch scores. This scores the run's head
(`sweeper.rundir.heads.load_run_head`: a baseline run's head, a sweep's best trial) on the split in
sorted order, then in `--orders` fixed shuffled orders (numpy seed `--seed`), and prints the
per-batch IoU / Dice / accuracy and per-class IoU of each against sorted order. Prints only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from sweeper import evaluate as ev
from sweeper.model.backbone import create_backbone
from sweeper.data.dataset import find_split
from sweeper.errors import SweeperError
from sweeper.data.cache_folder import default_cache_root
from sweeper.data.cache import cached_labels, cached_tokens
from sweeper.rundir.heads import build_head, load_run_head


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a baseline run folder or a sweep folder (its best trial)")
    p.add_argument("--data", type=Path, help="dataset root (default: the one the run was trained on)")
    p.add_argument("--split", default="val", help="split to score (default: val)")
    p.add_argument("--orders", type=int, default=20, help="shuffled orders to try (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled orders (default: 0)")
    args = p.parse_args(argv)
    try:
        run = load_run_head(args.run)
        root = args.data or (run.inputs.get("data") or {}).get("root")
        if not root:
            raise SweeperError(f"{args.run}: the run records no data root; pass --data")
        cfg, rec = run.config, run.inputs.get("backbone") or {}
        split = find_split(root, args.split)
        backbone = create_backbone(rec["name"], weights=rec.get("weights_path"))
        size = (cfg.image_height, cfg.image_width)
        tokens, _ = cached_tokens(split, backbone, cache_root=default_cache_root(), height=size[0], width=size[1],
                                  dtype=(run.inputs.get("cache") or {}).get("dtype") or "float32")
        labels = cached_labels(split, cache_root=default_cache_root(), height=size[0], width=size[1],
                               mode=cfg.label_mode)
        head = build_head(run, in_channels=backbone.embed_dim)
    except SweeperError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pred = ev.predict(head, tokens, size=size, device=torch.device("cpu"), show_progress=False)

    def scores(order: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        s = ev.score(pred[order], labels[order])
        per_class = np.array([np.nan if v is None else v for v in s["phase1"]["class_iou"].values()])
        return np.array([s["phase1"][k] for k in ("iou", "dice", "acc")]), per_class, s["dataset"]["miou"]

    base, base_class, base_miou = scores(np.arange(len(pred)))
    rng = np.random.default_rng(args.seed)
    shuffled = [scores(rng.permutation(len(pred))) for _ in range(args.orders)]
    delta = np.array([s - base for s, _, _ in shuffled])  # (orders, 3): iou, dice, acc
    class_delta = np.nanmax(np.abs([c - base_class for _, c, _ in shuffled]), axis=1)
    print(f"{run.label} of {args.run} on {split.root} ({len(pred)} images, batches of {ev.PHASE1_BATCH})")
    print(f"sorted order:       phase-1 IoU {base[0]:.4f}  Dice {base[1]:.4f}  accuracy {base[2]:.4f}  "
          f"dataset mIoU {base_miou:.4f}")
    first = shuffled[0][0]
    print(f"shuffled order 1:   phase-1 IoU {first[0]:.4f}  Dice {first[1]:.4f}  accuracy {first[2]:.4f}  "
          f"(IoU {first[0] - base[0]:+.4f} vs sorted)")
    for k, name in enumerate(("IoU", "Dice", "accuracy")):
        d = delta[:, k]
        print(f"{args.orders} shuffled orders, phase-1 {name:<8} minus sorted: mean |d| {np.abs(d).mean():.4f}, "
              f"range {d.min():+.4f} .. {d.max():+.4f}")
    print(f"largest per-class change (phase-1 per-batch per-class IoU): {class_delta.max():.4f}; dataset mIoU "
          f"unchanged in every order: {all(abs(m - base_miou) < 1e-12 for _, _, m in shuffled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
