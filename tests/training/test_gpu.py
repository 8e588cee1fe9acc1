"""CUDA-only checks of the GPU path, skipped without CUDA. Run by scripts/checks/gpu_check.sh.

They also run without pytest (a GPU box with only PyTorch and the project's runtime dependencies):
`PYTHONPATH=. python tests/training/test_gpu.py` runs every test here and exits non-zero on a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

try:
    import pytest
except ImportError:  # the GPU box may have no pytest: see __main__ below
    pytest = None

from sweeper.data.cache import load_train_data
from sweeper.data.synth.generate import generate
from sweeper.data.tokens import TrainData
from sweeper.model.backbone import create_backbone
from sweeper.training import device as dev
from sweeper.training.config import LabelMode, TrainConfig
from sweeper.training.train import Batches, load_checkpoint, train

HAS_CUDA = torch.cuda.is_available()
if pytest is not None:
    pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (scripts/checks/gpu_check.sh)")

SMALL = dict(image_height=56, image_width=112)
REPO = Path(__file__).resolve().parents[2]  # its own, not conftest's ROOT: this file also runs without pytest


def _data(root: Path, *, use_cache: bool = True, device: str = "cuda") -> TrainData:
    """A tiny synthetic set, tokens from a random ViT-S/14 built on `device`."""
    if not (root / "synth.json").exists():
        generate(root, train=6, val=4, test=0, seed=0, size=(224, 126))
    backbone = create_backbone("random_vits14").to(device)
    return load_train_data(root, backbone, height=SMALL["image_height"], width=SMALL["image_width"],
                           label_mode=LabelMode.PHASE1, cache_root=root.parent / "cache", use_cache=use_cache,
                           show_progress=False).with_counts()


def test_device_choice_on_a_gpu():
    assert dev.resolve_device("auto").type == "cuda"
    assert dev.trial_device("auto", [0]) == "cuda"
    assert dev.trial_device("auto", []) == "cpu"


def test_amp_dtype_is_what_autocast_runs():
    cuda = torch.device("cuda")
    want = dev.amp_dtype(torch.cuda.get_device_capability(cuda))
    a = torch.randn(8, 8, device=cuda)
    with dev.autocast(cuda, True):
        assert (a @ a).dtype == want
    assert (dev.grad_scaler(cuda, True) is not None) == (want == torch.float16)


def test_tokens_live_on_the_gpu_when_the_budget_holds_them(tmp_path):
    data = _data(tmp_path / "d")
    cuda = torch.device("cuda")
    staged = Batches(data.train, cuda, budget_bytes=2**34)
    assert staged.tokens_on_device is not None and staged.tokens_on_device.device.type == "cuda"
    host = Batches(data.train, cuda, budget_bytes=1)
    assert host.tokens_on_device is None
    x1, y1 = staged.get(np.array([2, 0]))
    x2, y2 = host.get(np.array([2, 0]))
    assert x1.device.type == x2.device.type == "cuda"
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_cached_equals_uncached_on_the_gpu(tmp_path):
    cfg = TrainConfig(**SMALL, epochs=2, device="cuda")
    cached = train(cfg, _data(tmp_path / "d")).history
    live = train(cfg, _data(tmp_path / "d", use_cache=False)).history
    for a, b in zip(cached, live):
        for k in ("train_loss", "val_loss", "val_iou", "val_miou", "train_iou"):
            assert abs(a[k] - b[k]) < 1e-4, (k, a[k], b[k])


def test_gpu_matches_cpu_closely(tmp_path):
    data = _data(tmp_path / "d")
    gpu = train(TrainConfig(**SMALL, epochs=2, device="cuda"), data).history[-1]
    cpu = train(TrainConfig(**SMALL, epochs=2, device="cpu"), data).history[-1]
    assert gpu["device"] == "cuda:0" or gpu["device"].startswith("cuda")
    assert abs(gpu["val_iou"] - cpu["val_iou"]) < 0.02 and abs(gpu["train_loss"] - cpu["train_loss"]) < 0.02


def test_checkpoint_written_on_the_gpu_resumes_on_a_cpu_only_process(tmp_path):
    data = _data(tmp_path / "d")
    states = []
    cfg = TrainConfig(**SMALL, epochs=2, device="cuda", optimizer="adamw", lr=1e-3)
    full = train(cfg, data, on_epoch=lambda rec, run: states.append(run.state_dict())).history
    torch.save(states[0], tmp_path / "state.pt")
    code = f"""
import torch, json
from pathlib import Path
assert not torch.cuda.is_available()
from sweeper.training.config import TrainConfig
from sweeper.training.train import load_checkpoint
state = load_checkpoint(Path({str(tmp_path / 'state.pt')!r}))
devs = set()
def walk(o):
    if isinstance(o, torch.Tensor): devs.add(o.device.type)
    elif isinstance(o, dict): [walk(v) for v in o.values()]
    elif isinstance(o, (list, tuple)): [walk(v) for v in o]
walk(state)
print(json.dumps(sorted(devs)))
"""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == '["cpu"]'
    resumed = train(cfg.replace(device="cpu"), data, resume=load_checkpoint(tmp_path / "state.pt")).history
    assert resumed[0]["epoch"] == 1 and len(resumed) == 2
    assert abs(resumed[1]["val_iou"] - full[1]["val_iou"]) < 0.02  # epoch 2 on the CPU, from a GPU epoch 1


def test_memory_cap_and_oom_message_in_a_fresh_process(tmp_path):
    # The cap is process-wide: test it in a child so this process keeps the whole GPU.
    code = """
import torch
from sweeper.training import device as dev
cap = dev.cap_memory(torch.device("cuda"), 0.25, limit_bytes=6 * 2**30)  # a quarter of a 6 GB card
try:
    torch.empty(int(cap * 1.5), dtype=torch.uint8, device="cuda")
    print("NO-OOM")
except torch.cuda.OutOfMemoryError:
    print("OOM", cap)
"""
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("OOM"), out.stdout + out.stderr[-2000:]


def test_a_cuda_context_fits_the_figure_the_caps_keep_back():
    # The per-process cap leaves out the CUDA context: measured by scripts/checks/cuda_context.py in a fresh process
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "cuda_context.py")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    if m["context_mb"] is None:
        if pytest is not None:
            pytest.skip("nvidia-smi cannot see this process (a container's PID namespace)")
        return
    assert m["context_mb"] * 2**20 <= dev.CUDA_CONTEXT_BYTES, f"a CUDA context takes {m['context_mb']:.0f} MB here"


if __name__ == "__main__":  # without pytest: run every test with a fresh temp folder
    if not HAS_CUDA:
        print("test_gpu: no CUDA GPU: skipped")
        sys.exit(0)
    failed = 0
    for name, fn in sorted((n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)):
        try:
            with tempfile.TemporaryDirectory() as d:
                fn(Path(d)) if fn.__code__.co_argcount else fn()
            print(f"PASSED {name}")
        except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
            failed += 1
            print(f"FAILED {name}: {type(e).__name__}: {e}")
    print(f"{failed} failed")
    sys.exit(1 if failed else 0)
