"""Subnormal stalls: AdamW epochs against SGD epochs, with the flush and without, in one process.

    PYTHONPATH=. python scripts/bench/denormals.py [--adamw-epochs 6] [--sgd-epochs 3] [--out results/bench/denormals.json]

On the default sweep's data (the embedded synthetic set's cached tokens, random_vits14, 476x266), in order:
phase-1 SGD for --sgd-epochs, issue 26's stalling trial 6 (AdamW lr 8.2e-4, batch 2, inverse weights) for
--adamw-epochs, then SGD again. Each AdamW epoch runs twice from the same state, with the flush and without
(`TrainConfig.flush_denormals`), back to back, so both see the same load and the same weights; training goes on
from the flushed run. Before each AdamW epoch one training batch, without the flush, counts the subnormals in the
gradients (the cause, seen on any CPU, stalling or not). Prints each epoch's seconds and the AdamW/SGD ratios
(medians); writes the JSON with the CPU model and the load average. Target: AdamW/SGD <= 1.3 with the flush.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import REPO, cpu_model, log, median  # noqa: E402
from sweeper.data.cache import load_train_data  # noqa: E402
from sweeper.data.cache_folder import default_cache_root  # noqa: E402
from sweeper.data.classes import LabelMode  # noqa: E402
from sweeper.data.synth.generate import default_dataset  # noqa: E402
from sweeper.model.backbone import create_backbone  # noqa: E402
from sweeper.model.head import create_head  # noqa: E402
from sweeper.training.config import TrainConfig  # noqa: E402
from sweeper.training.denormals import count_subnormal, flush_denormals  # noqa: E402
from sweeper.training.train import train  # noqa: E402

SGD = TrainConfig(train_metrics=False, device="cpu")  # phase 1 as a search trial runs it (trial 0)
ADAMW = dataclasses.replace(SGD, optimizer="adamw", lr=8.2e-4, class_weights="inverse")  # issue 26's trial 6
TARGET = 1.3  # AdamW epoch / SGD epoch, with the flush


def sweep_data():
    """The default sweep's train/val data: the embedded set's cached float32 tokens (built once into the cache)."""
    cache = default_cache_root()
    root = default_dataset(cache / "data")
    return load_train_data(root, create_backbone("random_vits14"), height=SGD.image_height, width=SGD.image_width,
                           label_mode=LabelMode.PHASE1, cache_root=cache, show_progress=False).with_counts()


def epochs(config: TrainConfig, data, n: int, *, resume: dict | None = None) -> tuple[list[float], dict]:
    """Seconds of each of n more epochs of `config` (from `resume`), and the state after them."""
    state: dict[str, Any] = {}
    done = len(resume["history"]) if resume else 0
    result = train(dataclasses.replace(config, epochs=done + n), data, resume=resume,
                   on_epoch=lambda r, run: state.update(run.state_dict()))
    return [r["epoch_seconds"] for r in result.history[done:]], state


def subnormals_in_a_step(config: TrainConfig, data, state: dict | None) -> int:
    """Subnormal values in the gradients of one training batch from `state`, without the flush."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = create_head(config.head, in_channels=data.embed_dim, num_classes=data.num_classes)
    if state:
        head.load_state_dict(state["head"])
    found = []
    for m in head.modules():
        if not list(m.children()):
            m.register_full_backward_hook(lambda mod, gi, go: found.append(sum(count_subnormal(g) for g in gi
                                                                                 if g is not None)))
    first = np.arange(config.batch_size)  # the train split's first batch
    x, y = data.train.tokens.get(first), torch.from_numpy(data.train.labels[first]).long()
    with flush_denormals(False):
        out = F.interpolate(head(x), size=y.shape[1:], mode="bilinear", align_corners=False)
        F.cross_entropy(out, y).backward()
    return int(sum(found) + sum(count_subnormal(p.grad) for p in head.parameters()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adamw-epochs", type=int, default=6)
    ap.add_argument("--sgd-epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "denormals.json")
    args = ap.parse_args(argv)

    data = sweep_data()
    load_before = os.getloadavg()
    log(f"CPU {cpu_model()}, {torch.get_num_threads()} threads, load {load_before[0]:.1f}")
    sgd_before, sgd_state = epochs(SGD, data, args.sgd_epochs)
    log(f"SGD epochs: {[round(s, 2) for s in sgd_before]}")
    flushed, unflushed, counts, state = [], [], [], None
    for e in range(1, args.adamw_epochs + 1):
        counts.append(subnormals_in_a_step(ADAMW, data, state))
        off, _ = epochs(dataclasses.replace(ADAMW, flush_denormals=False), data, 1, resume=state)
        on, state = epochs(ADAMW, data, 1, resume=state)
        flushed += on
        unflushed += off
        log(f"AdamW epoch {e}: {on[0]:.2f} s flushed, {off[0]:.2f} s not; {counts[-1]} subnormals in one step's "
            f"gradients without the flush")
    sgd_after, _ = epochs(SGD, data, args.sgd_epochs)
    sgd_counts = [subnormals_in_a_step(SGD, data, None), subnormals_in_a_step(SGD, data, sgd_state)]
    log(f"SGD epochs: {[round(s, 2) for s in sgd_after]}")

    sgd = median(sgd_before + sgd_after)
    out = {
        "command": " ".join(["PYTHONPATH=. python scripts/bench/denormals.py", *(argv or sys.argv[1:])]),
        "cpu_model": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "sgd": {"config": "phase 1 (SGD lr 1e-4, batch 2), train metrics off", "epoch_seconds_before": sgd_before,
                "epoch_seconds_after": sgd_after, "median_s": sgd,
                "subnormals_per_step_unflushed_first_and_last_epoch": sgd_counts},
        "adamw": {"config": "issue 26's trial 6: AdamW lr 8.2e-4, batch 2, inverse weights",
                  "epoch_seconds_flushed": flushed, "epoch_seconds_unflushed": unflushed,
                  "subnormals_per_step_unflushed": counts},
        "ratio_adamw_over_sgd": {"flushed": median(flushed) / sgd, "unflushed": median(unflushed) / sgd},
        # the same epoch from the same state, back to back: the flush's own effect, load drift cancelled
        "ratio_unflushed_over_flushed_per_epoch": [off / on for on, off in zip(flushed, unflushed)],
        "target_flushed": f"<= {TARGET}",
    }
    out["met"] = out["ratio_adamw_over_sgd"]["flushed"] <= TARGET
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    r = out["ratio_adamw_over_sgd"]
    print(f"CPU: {out['cpu_model']}  load {load_before[0]:.1f} -> {out['load_average_after'][0]:.1f}")
    print(f"median epoch: SGD {sgd:.2f} s, AdamW {median(flushed):.2f} s flushed, {median(unflushed):.2f} s not")
    print(f"AdamW/SGD: {r['flushed']:.2f}x flushed (target <= {TARGET}: {'met' if out['met'] else 'MISSED'}), "
          f"{r['unflushed']:.2f}x without the flush; subnormals per step without it: {counts}")
    print(f"subnormals per SGD step without the flush, at its start and after {args.sgd_epochs} epochs: {sgd_counts}")
    print("each AdamW epoch without the flush / with it: "
          + ", ".join(f"{x:.2f}" for x in out["ratio_unflushed_over_flushed_per_epoch"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
