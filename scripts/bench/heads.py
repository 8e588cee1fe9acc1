"""Each registered head's size and cost per image, measured side by side in one process.

    python scripts/bench/heads.py [--repeats 15] [--device cpu]

On ViT-S/14 tokens of phase 1's input (19x34x384 per image), batch 2 as phase 1 trains: parameters, a
training step (forward, cross-entropy at 266x476, backward, SGD step) and an inference forward, in ms per
image. The heads are timed in interleaved rounds, so load on a shared machine hits all of them alike;
medians and the ratio to phase 1's head are reported. Writes results/bench/heads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sweeper.model.head import HEADS, create_head  # noqa: E402
from sweeper.training.train import logits  # noqa: E402

GRID, CHANNELS, CLASSES, SIZE, BATCH = (19, 34), 384, 10, (266, 476), 2


def step_seconds(head: torch.nn.Module, tokens: torch.Tensor, target: torch.Tensor, opt) -> float:
    """One training step as `train` takes it (logits upsampled to the label size, unweighted CE)."""
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(logits(head, tokens, SIZE), target).backward()
    opt.step()
    return time.perf_counter() - t


@torch.inference_mode()
def forward_seconds(head: torch.nn.Module, tokens: torch.Tensor) -> float:
    t = time.perf_counter()
    logits(head, tokens, SIZE).argmax(1)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as one trial)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = torch.randn(BATCH, *GRID, CHANNELS)
    target = torch.randint(0, CLASSES, (BATCH, *SIZE))
    heads = {n: create_head(n, in_channels=CHANNELS, num_classes=CLASSES) for n in HEADS}
    opts = {n: torch.optim.SGD(h.parameters(), lr=1e-4, momentum=0.9) for n, h in heads.items()}
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer": []} for n in heads}
    for n, h in heads.items():  # warm-up
        step_seconds(h, tokens, target, opts[n])
        forward_seconds(h.eval(), tokens)
    for _ in range(args.repeats):
        for n, h in heads.items():  # interleaved: each round times every head once
            times[n]["train"].append(step_seconds(h.train(), tokens, target, opts[n]) / BATCH)
            times[n]["infer"].append(forward_seconds(h.eval(), tokens) / BATCH)
    base = {k: statistics.median(times["convnext_phase1"][k]) for k in ("train", "infer")}
    rows = {}
    for n, h in heads.items():
        train_ms, infer_ms = (1000 * statistics.median(times[n][k]) for k in ("train", "infer"))
        rows[n] = {"parameters": sum(p.numel() for p in h.parameters()),
                   "train_step_ms_per_image": round(train_ms, 2), "forward_ms_per_image": round(infer_ms, 2),
                   "train_vs_phase1": round(train_ms / (1000 * base["train"]), 2),
                   "forward_vs_phase1": round(infer_ms / (1000 * base["infer"]), 2)}
    out = {"device": "cpu", "threads": args.threads, "repeats": args.repeats, "batch": BATCH,
           "tokens": [*GRID, CHANNELS], "label_size": list(SIZE), "load_average": os.getloadavg(),
           "torch": torch.__version__, "heads": rows}
    path = Path(__file__).resolve().parents[2] / "results" / "bench" / "heads.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("| head | parameters | train step ms/image | forward ms/image | train vs phase 1 |")
    print("|---|---:|---:|---:|---:|")
    for n, r in rows.items():
        print(f"| {n} | {r['parameters']:,} | {r['train_step_ms_per_image']} | {r['forward_ms_per_image']} | "
              f"{r['train_vs_phase1']}x |")
    print(f"load average {os.getloadavg()[0]:.1f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
