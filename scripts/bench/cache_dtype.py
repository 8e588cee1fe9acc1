"""Does a float16 feature cache change what a sweep finds? Same configs, same seeds, float32 vs float16 tokens.

    python scripts/bench/cache_dtype.py [--data DIR] [--configs 12] [--seed 0]

Builds both caches of one dataset (default: the embedded synthetic set), draws the default space's
trial 0 (phase 1) plus N-1 configs from the space (Optuna's seeded random sampler), trains each
config to its full length on both caches, and compares every config's best val IoU, its best
epoch and the winner. Writes results/bench/cache_dtype.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py

from common import REPO, token_bytes  # noqa: E402
from sweeper.model.backbone import create_backbone  # noqa: E402
from sweeper.search.space import default_space_path  # noqa: E402
from sweeper.data.cache_folder import default_cache_root  # noqa: E402
from sweeper.data.cache import load_train_data  # noqa: E402
from sweeper.training.objective import best_index  # noqa: E402
from sweeper.search.space import load_space  # noqa: E402
from sweeper.data.synth.generate import default_dataset  # noqa: E402
from sweeper.training.train import train  # noqa: E402


def sample_configs(space, n: int, seed: int) -> list[dict]:
    """Trial 0 (the phase-1 point) and n-1 points drawn from the space by a seeded random sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    points = [space.baseline_point()]
    for _ in range(n - 1):
        trial = study.ask()
        points.append(space.suggest(trial))
        study.tell(trial, 0.0)
    return points


def best(history) -> tuple[float, int]:
    """A run's best val IoU and its epoch (the earliest on ties, NaN epochs skipped), as a sweep ranks it."""
    rec = history[best_index([r["val_iou"] for r in history])]
    return rec["val_iou"], rec["epoch"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--configs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "cache_dtype.json")
    args = ap.parse_args()
    cache_root = default_cache_root()
    root = args.data or default_dataset(cache_root / "data")
    space = load_space(default_space_path())
    backbone = create_backbone("random_vits14")
    base = space.to_config(space.baseline_point())
    data = {dt: load_train_data(root, backbone, height=base.image_height, width=base.image_width,
                                label_mode=base.label_mode, cache_root=cache_root, dtype=dt, show_progress=False)
            for dt in ("float32", "float16")}
    tok32 = np.asarray(data["float32"].train.tokens.array, dtype=np.float32)
    tok16 = np.asarray(data["float16"].train.tokens.array, dtype=np.float32)
    rows = []
    started = time.perf_counter()
    for i, point in enumerate(sample_configs(space, args.configs, args.seed)):
        cfg = space.to_config(point).replace(device="cpu", threads=os.cpu_count() or 1)
        row = {"config": i, "optimizer": cfg.optimizer.value, "lr": cfg.lr, "epochs": cfg.epochs,
               "class_weights": cfg.class_weights.value, "batch_size": cfg.batch_size}
        for dt, d in data.items():
            iou, epoch = best(train(cfg, d).history)
            row[f"best_val_iou_{dt}"], row[f"best_epoch_{dt}"] = iou, epoch
        row["delta"] = row["best_val_iou_float16"] - row["best_val_iou_float32"]
        rows.append(row)
        print(f"config {i}: float32 {row['best_val_iou_float32']:.5f} (epoch {row['best_epoch_float32']}), "
              f"float16 {row['best_val_iou_float16']:.5f} (epoch {row['best_epoch_float16']})", file=sys.stderr)
    df = pd.DataFrame(rows)
    winner = {dt: int(df[f"best_val_iou_{dt}"].idxmax()) for dt in data}
    summary = {
        "data": str(root), "configs": len(df), "seed": args.seed,
        "token_rel_error_max": float(np.max(np.abs(tok16 - tok32)) / np.max(np.abs(tok32))),
        "delta_abs_max": float(df.delta.abs().max()), "delta_mean": float(df.delta.mean()),
        "same_best_epoch": int((df.best_epoch_float16 == df.best_epoch_float32).sum()),
        "winner": winner, "same_winner": winner["float32"] == winner["float16"],
        "rank_correlation": float(df.best_val_iou_float32.rank().corr(df.best_val_iou_float16.rank())),
        "cache_bytes": {dt: token_bytes(d) for dt, d in data.items()},
        "seconds": round(time.perf_counter() - started, 1), "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "configs": rows}, indent=2))
    print(df.to_string(index=False, float_format=lambda v: f"{v:.5g}"))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
