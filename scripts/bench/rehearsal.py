"""Full-size rehearsal of the user's real run, on this machine: the sizes of the Duality set, every stage timed.

    python scripts/bench/rehearsal.py --full [--data DIR] [--work DIR] [--trials 8] [--max-epochs 2]
    python scripts/bench/rehearsal.py --small        # the same stages on a 48/16/16 set, in minutes (a dry run)

Stages, each measured in this one run:
  data      a synthetic set of the real size (2,857 train, 317 val, 1,002 test at 960x540), or --data
  cache     both dtypes built afresh on the val split in a scratch folder, scaled to train+val
            (seconds, seconds per image, bytes on disk); the sweep's train+val entry built if missing
  naive     phase 1's backbone-in-the-loop epoch on a subset, scaled linearly to the full splits
  sweep     `sweeper search` (its default cache dtype) with ASHA's max epochs lowered so it fits:
            seconds per trial-epoch, the driver's peak RSS, object-store bytes, each trial's private
            and shared memory, disk used by checkpoints and results
  report    `sweeper report`, then `sweeper evaluate` on the test split
Writes results/bench/full.json (or small.json) and prints a table. The backbone is random_vits14:
the ViT-S/14 architecture, the same cost as Meta's weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py

from common import REPO, du, log, sweeper_cli  # noqa: E402

from sweeper.model.backbone import create_backbone  # noqa: E402
from sweeper.training.config import TrainConfig  # noqa: E402
from sweeper.data.dataset import find_split  # noqa: E402
from sweeper.data.cache import cached_tokens  # noqa: E402
from sweeper.data.tokens import BackboneTokens, SplitData, TrainData  # noqa: E402
from sweeper.training.train import train  # noqa: E402

SIZES = {"full": (2857, 317, 1002), "small": (48, 16, 16)}
NAIVE_SUBSET = (24, 8)  # train, val images of the timed backbone-in-the-loop epoch
CONFIG = TrainConfig()  # phase 1: 476x266, label mode phase1


def stage_data(root: Path, sizes: tuple[int, int, int], env: dict[str, str]) -> dict[str, Any]:
    """The synthetic set of the given sizes (generated unless already there)."""
    if (root / "synth.json").is_file():
        marker = root.parent / f"{root.name}.seconds"
        return {"root": str(root), "generated_seconds": float(marker.read_text()) if marker.is_file() else None,
                "reused": True, "bytes": du(root)}
    seconds = sweeper_cli("-q", "synth", str(root), "--train", str(sizes[0]), "--val", str(sizes[1]),
                          "--test", str(sizes[2]), env=env)
    (root.parent / f"{root.name}.seconds").write_text(f"{seconds:.1f}")
    return {"root": str(root), "generated_seconds": round(seconds, 1), "reused": False, "bytes": du(root)}


def stage_cache(root: Path, cache: Path, backbone, sweep_dtype: str) -> dict[str, Any]:
    """Time the cache in both dtypes on the val split, built afresh in a scratch folder in this run and
    scaled to train+val (the backbone pass costs the same per image; bytes scale exactly with the count);
    then make sure the sweep's train+val entry exists (a reused entry is not rebuilt: building 3,174
    images costs about an hour on this machine, and the val timing above is this run's own)."""
    import shutil
    import tempfile

    out: dict[str, Any] = {}
    full = sum(len(find_split(root, n)) for n in ("train", "val"))
    val = find_split(root, "val")
    scratch = Path(tempfile.mkdtemp(prefix="rehearsal-cache-", dir=cache.parent))
    try:
        for dtype in (sweep_dtype, "float32" if sweep_dtype == "float16" else "float16"):
            t = time.perf_counter()
            cached_tokens(val, backbone, cache_root=scratch, height=CONFIG.image_height, width=CONFIG.image_width,
                          dtype=dtype, show_progress=False)
            seconds, size = time.perf_counter() - t, du(scratch / "tokens")
            shutil.rmtree(scratch / "tokens")
            out[dtype] = {"seconds": round(seconds * full / len(val), 1),
                          "ms_per_image": round(1000 * seconds / len(val), 1),
                          "bytes": int(size * full / len(val)), "images_built": len(val), "scaled_from_val": True}
            log(f"cache {dtype}: {seconds:.0f} s for {len(val)} val images, {size / 1e9:.2f} GB")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    t = time.perf_counter()
    hits = [cached_tokens(find_split(root, name), backbone, cache_root=cache, height=CONFIG.image_height,
                          width=CONFIG.image_width, dtype=sweep_dtype, show_progress=False)[1]
            for name in ("train", "val")]
    out["sweep_entry"] = {"dtype": sweep_dtype, "reused": all(hits),
                          "seconds_to_build_missing": round(time.perf_counter() - t, 1)}
    return out


def stage_naive(root: Path, backbone, full: tuple[int, int], *, subset: tuple[int, int] = NAIVE_SUBSET,
                device: str = "cpu") -> dict[str, Any]:
    """One phase-1 epoch (backbone in the loop, train metrics on) on a subset, scaled to the full splits."""
    from sweeper.data.dataset import load_split_labels

    parts = {}
    for name, n in zip(("train", "val"), subset):
        split = find_split(root, name)
        split = type(split)(split.name, split.root, split.image_paths[:n], split.mask_paths[:n])
        labels = load_split_labels(split, height=CONFIG.image_height, width=CONFIG.image_width,
                                   mode=CONFIG.label_mode, allow_unknown=False)
        parts[name] = SplitData(name, labels, BackboneTokens(split, backbone, CONFIG.image_height,
                                                             CONFIG.image_width))
    data = TrainData(train=parts["train"], val=parts["val"], embed_dim=backbone.embed_dim)
    seconds = train(CONFIG.replace(epochs=1, device=device), data).history[0]["epoch_seconds"]
    scale = sum(full) / sum(subset)
    return {"subset": list(subset), "device": device, "subset_epoch_seconds": round(seconds, 1),
            "full_epoch_seconds": round(seconds * scale, 1), "scale": round(scale, 2)}


def write_space(path: Path, trials: int, max_epochs: int) -> Path:
    """The default phase-2 space with ASHA's max epochs (and every trial's epochs) lowered to fit."""
    import yaml

    from sweeper.search.space import default_space_path

    raw = yaml.safe_load(default_space_path().read_text())
    raw["trials"] = trials
    raw["asha"] = {"max_epochs": max_epochs, "grace_period": 1, "reduction_factor": 2}
    raw["params"].pop("epochs", None)
    raw["params"].pop("warmup_epochs", None)  # warm-up longer than a 2-epoch run is out of range
    raw["params"]["schedule"]["choices"] = ["constant", "cosine"]
    raw.setdefault("fixed", {})["epochs"] = max_epochs
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stage_sweep(root: Path, work: Path, env: dict[str, str], trials: int, max_epochs: int,
                cache_dtype: str) -> dict[str, Any]:
    """A sweep at full size; per trial-epoch time, memory, object store and disk."""
    space = write_space(work / "rehearsal_space.yaml", trials, max_epochs)
    seconds = sweeper_cli("search", "--data", str(root), "--space", str(space), "--out", str(work / "runs"),
                          "--name", "full", "--cache-dtype", cache_dtype, env=env)
    run = work / "runs" / "full"
    info = json.loads((run / "sweep.json").read_text())
    trials_df, history = pd.read_csv(run / "trials.csv"), pd.read_csv(run / "history.csv")
    return {
        "wall_seconds": round(seconds, 1), "trials": len(trials_df), "cache_dtype": info["cache"]["dtype"],
        "trial_epochs": int(trials_df.epochs_run.sum()), "stopped_early": int(trials_df.stopped_early.sum()),
        "trial_epoch_seconds_median": round(float(history.epoch_seconds.median()), 1),
        "driver_peak_rss_mb": round(info.get("driver_peak_rss_mb", float("nan")), 0),
        "object_store_bytes": info["object_store"]["trial_bytes"],
        "trial_peak_private_mb": trials_df.peak_private_mb.round(0).tolist(),
        "trial_peak_shared_mb": trials_df.peak_shared_mb.round(0).tolist(),
        "checkpoint_bytes": sum(du(p) for p in (run / "ray").rglob("checkpoint_*")),
        "run_folder_bytes": du(run), "best_val_iou": float(trials_df.best_val_iou.max()),
        "baseline_trial_val_iou": float(trials_df[trials_df.baseline].best_val_iou.iloc[0]),
    }


def table(result: dict[str, Any]) -> str:
    """The README's rows."""
    c, n, s = result["cache"], result["naive"], result["sweep"]
    rows = [
        ("data", f"{result['sizes']} images at 960x540, {result['data']['bytes'] / 1e9:.2f} GB"
                 + (f", generated in {result['data']['generated_seconds']:.0f} s"
                    if result["data"].get("generated_seconds") else "")),
        *((f"cache {dt}" + (" (val built, scaled)" if c[dt]["scaled_from_val"] else ""),
           f"{c[dt]['seconds']:.0f} s ({c[dt]['ms_per_image']:.0f} ms/image), {c[dt]['bytes'] / 1e9:.2f} GB")
          for dt in ("float32", "float16")),
        ("naive phase-1 epoch", f"{n['full_epoch_seconds'] / 60:.1f} min (subset {n['subset']} in "
                                f"{n['subset_epoch_seconds']} s, x{n['scale']})"),
        ("sweep", f"{s['trials']} trials, {s['trial_epochs']} trial-epochs ({s['stopped_early']} stopped early), "
                  f"{s['wall_seconds'] / 60:.1f} min, {s['cache_dtype']} cache"),
        ("cached trial-epoch", f"{s['trial_epoch_seconds_median']:.0f} s median (1 thread, 2 trials at once)"),
        ("sweep vs one phase-1 run", f"{s['wall_seconds'] + c[s['cache_dtype']]['seconds']:.0f} s incl. cache vs "
                                     f"10 naive epochs = {10 * n['full_epoch_seconds']:.0f} s (ratio "
                                     f"{(s['wall_seconds'] + c[s['cache_dtype']]['seconds']) / (10 * n['full_epoch_seconds']):.2f})"),
        ("memory", f"driver peak RSS {s['driver_peak_rss_mb']:.0f} MB; object store "
                   f"{s['object_store_bytes'] / 1e9:.2f} GB; trial private {min(s['trial_peak_private_mb']):.0f}-"
                   f"{max(s['trial_peak_private_mb']):.0f} MB, shared {min(s['trial_peak_shared_mb']):.0f}-"
                   f"{max(s['trial_peak_shared_mb']):.0f} MB"),
        ("disk", f"checkpoints {s['checkpoint_bytes'] / 1e6:.0f} MB, run folder {s['run_folder_bytes'] / 1e6:.0f} MB"),
        ("report / evaluate", f"{result['report_seconds']:.0f} s / {result['evaluate_seconds']:.0f} s "
                              f"({result['sizes'][2]} test images)"),
    ]
    return "\n".join(["| stage | measured |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group(required=True)
    size.add_argument("--full", action="store_true", help="the real dataset's sizes (about an hour on 2 CPUs)")
    size.add_argument("--small", action="store_true", help="48/16/16 images: the same stages in minutes")
    ap.add_argument("--data", type=Path, help="an existing synthetic set of the right size (else generated)")
    ap.add_argument("--work", type=Path, help="folder for data, cache and runs (default: a temp folder)")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--max-epochs", type=int, default=2)
    ap.add_argument("--cache-dtype", choices=["float32", "float16"], default="float16", help="the sweep's")
    args = ap.parse_args()
    kind = "full" if args.full else "small"
    sizes = SIZES[kind]
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix=f"rehearsal-{kind}-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    env = {**os.environ, "SWEEPER_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    load_before = os.getloadavg()
    result: dict[str, Any] = {"kind": kind, "sizes": list(sizes), "work": str(work)}
    out = REPO / "results" / "bench" / f"{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage: a long run that dies still leaves what it measured
        result["load_average_now"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=2))

    root = args.data or work / "data"
    log(f"data: {root}")
    result["data"] = stage_data(root, sizes, env)
    save()
    backbone = create_backbone("random_vits14")
    log("cache: both dtypes on the val split (scratch), then the sweep's train+val entry if missing")
    result["cache"] = stage_cache(root, cache, backbone, args.cache_dtype)
    save()
    log("naive: a phase-1 epoch on a subset")
    result["naive"] = stage_naive(root, backbone, sizes[:2])
    save()
    del backbone
    log(f"sweep: {args.trials} trials, ASHA max {args.max_epochs} epochs")
    result["sweep"] = stage_sweep(root, work, env, args.trials, args.max_epochs, args.cache_dtype)
    save()
    run = work / "runs" / "full"
    result["report_seconds"] = round(sweeper_cli("report", str(run), env=env), 1)
    save()
    result["evaluate_seconds"] = round(sweeper_cli("evaluate", str(run), "--data", str(root / "test"), env=env), 1)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_before_after"] = [load_before, os.getloadavg()]
    result["cpus"] = os.cpu_count()
    save()
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
