"""Trainer processes on one GPU without Ray: N at once, each capped to its share; and a kill -9 / resume.

    PYTHONPATH=. python scripts/checks/gpu_trainers.py --procs 4 --share 0.25 [--amp] [--epochs 2] [--device cuda]
    PYTHONPATH=. python scripts/checks/gpu_trainers.py --kill-resume [--device cuda]

What a sweep's trials do on a GPU, minus Ray: each process trains the phase-1 head on the embedded
synthetic set's cached tokens (476x266) with `gpu_share` = --share, so `train` caps its allocator
at that part of the GPU. Prints one JSON object: per process its device, val IoU per epoch, epoch
seconds and peak allocated / reserved memory; with nvidia-smi, the GPU's peak memory and utilisation.
`--device cpu` runs the same on the CPU (a dry run of the script itself).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py

import torch  # noqa: E402

from common import Sampler, work_dir  # noqa: E402
from sweeper.model.backbone import create_backbone  # noqa: E402
from sweeper.training.config import TrainConfig  # noqa: E402
from sweeper.data.cache_folder import default_cache_root  # noqa: E402
from sweeper.data.cache import load_train_data  # noqa: E402
from sweeper.files import write_atomic  # noqa: E402
from sweeper.data.synth.generate import default_dataset  # noqa: E402
from sweeper.training.train import load_checkpoint, train  # noqa: E402

CONFIG = TrainConfig(train_metrics=False)  # a search trial's phase-1 settings


def load_data(device: str):
    """The embedded synthetic set's train/val tokens, the cache built on `device` on first use."""
    cache = default_cache_root()
    backbone = create_backbone("random_vits14").to(device)
    data = load_train_data(default_dataset(cache / "data"), backbone, height=CONFIG.image_height,
                           width=CONFIG.image_width, label_mode=CONFIG.label_mode, cache_root=cache,
                           show_progress=False)
    backbone.to("cpu")
    return data.with_counts()


def trainer(rank: int, cfg: TrainConfig, queue, checkpoint: str | None = None, resume: str | None = None) -> None:
    """One trainer process: train, then put its figures on the queue."""
    data = load_data("cpu")  # a cache hit: no backbone pass
    state = load_checkpoint(resume) if resume else None

    def on_epoch(record, run):
        if checkpoint:  # whole or absent: the kill may land mid-write
            write_atomic(Path(checkpoint), lambda f: torch.save(run.state_dict(), f))

    try:
        history = train(cfg, data, on_epoch=on_epoch, resume=state).history
        cuda = cfg.device.startswith("cuda")
        queue.put({"rank": rank, "ok": True, "device": history[-1]["device"],
                   "val_iou": [round(r["val_iou"], 6) for r in history],
                   "epoch_seconds": [round(r["epoch_seconds"], 2) for r in history],
                   "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                   "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if cuda else None})
    except Exception as e:  # noqa: BLE001 - every failure is reported, the check decides
        queue.put({"rank": rank, "ok": False, "error": f"{type(e).__name__}: {e}"})


class GpuSampler(Sampler):
    """nvidia-smi every 0.5 s in a thread: peak memory used and utilisation of GPU 0."""

    def __init__(self) -> None:
        super().__init__(interval=0.5)
        self.samples: list[tuple[float, float]] = []

    def sample(self) -> bool:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5).stdout
            mem, util = (float(v) for v in out.strip().split(","))
        except (OSError, ValueError, subprocess.SubprocessError):
            return False  # no nvidia-smi (or no GPU 0): the summary says None
        self.samples.append((mem, util))
        return True

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"gpu_peak_memory_mb": None, "gpu_util_mean": None, "gpu_util_max": None}
        mem, util = zip(*self.samples)
        return {"gpu_peak_memory_mb": max(mem), "gpu_util_mean": round(sum(util) / len(util), 1),
                "gpu_util_max": max(util)}


def concurrent(procs: int, cfg: TrainConfig) -> dict:
    """`procs` trainers at once; their figures and the GPU's."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    started = time.perf_counter()
    with GpuSampler() as sampler:
        ps = [ctx.Process(target=trainer, args=(r, cfg, queue)) for r in range(procs)]
        for p in ps:
            p.start()
        results = [queue.get(timeout=600) for _ in ps]
        for p in ps:
            p.join(timeout=60)
    return {"procs": procs, "share": cfg.gpu_share, "amp": cfg.amp, "wall_seconds": round(time.perf_counter() -
            started, 1), "trainers": sorted(results, key=lambda r: r["rank"]), **sampler.summary()}


def kill_resume(cfg: TrainConfig, work: Path) -> dict:
    """Kill a trainer with SIGKILL once it has written a checkpoint, resume it in a new process, compare with a
    run that was never interrupted."""
    ctx = mp.get_context("spawn")
    queues = {rank: ctx.Queue() for rank in range(3)}  # one per trainer: a killed one never puts its result
    ckpt = work / "state.pt"
    victim = ctx.Process(target=trainer, args=(0, cfg, queues[0], str(ckpt)))
    victim.start()
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline and victim.is_alive():
        time.sleep(0.05)
    if not ckpt.exists():  # it ended (or hung) before its first checkpoint: nothing to resume from
        victim.kill()
        victim.join()
        ended = queues[0].get(timeout=5) if not queues[0].empty() else {"error": "no result"}
        return {"ok": False, "error": f"the trainer wrote no checkpoint (exit code {victim.exitcode}): "
                                      f"{ended.get('error', 'it finished first')}"}
    victim.kill()  # SIGKILL through the Process, which knows whether it was already reaped
    victim.join()
    epochs_done = len(load_checkpoint(ckpt)["history"])
    resumed = ctx.Process(target=trainer, args=(1, cfg, queues[1], None, str(ckpt)))
    clean = ctx.Process(target=trainer, args=(2, cfg, queues[2]))
    resumed.start()
    clean.start()
    results = {rank: queues[rank].get(timeout=600) for rank in (1, 2)}
    resumed.join()
    clean.join()
    ok = results[1].get("ok") and results[2].get("ok")
    diff = max(abs(a - b) for a, b in zip(results[1]["val_iou"], results[2]["val_iou"])) if ok else None
    return {"ok": bool(ok) and diff is not None and diff < 1e-4, "killed_after_epochs": epochs_done,
            "exit_signal": -victim.exitcode, "resumed": results[1], "uninterrupted": results[2],
            "max_val_iou_diff": diff, "equal_within_1e-4": diff is not None and diff < 1e-4}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--share", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--kill-resume", action="store_true", help="the SIGKILL / resume check instead")
    ap.add_argument("--work", type=Path, help="--kill-resume's checkpoint folder (default: a temp dir, removed)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_trainers: no CUDA GPU visible to torch (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    load_data(args.device)  # build the cache once, on the device, before the trainers start
    cfg = CONFIG.replace(device=args.device, epochs=args.epochs, amp=args.amp, gpu_share=min(1.0, args.share),
                         threads=1)
    if args.kill_resume:
        with work_dir(args.work, prefix="gpu_trainers-") as work:
            (work / "state.pt").unlink(missing_ok=True)
            out = kill_resume(cfg.replace(epochs=max(3, args.epochs)), work)
    else:
        out = concurrent(args.procs, cfg)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
