"""The CUDA path's logic, tested on the CPU: device choice, memory share, AMP dtype, checkpoints, release.

What needs a real GPU (the cap enforced, tokens resident on the device, a GPU checkpoint loaded on a
CPU) is in tests/training/test_gpu.py, which runs where CUDA exists (scripts/checks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset
from test_train import SMALL, learnable_data

from sweeper.data.tokens import TrainData
from sweeper.errors import OOM_MARK
from sweeper.training import device as dev
from sweeper.training.config import LabelMode, TrainConfig
from sweeper.training.train import load_checkpoint, train


def test_trial_device_follows_the_gpus_ray_granted(fake_cuda):
    assert dev.trial_device("auto", [0]) == "cuda"
    assert dev.trial_device("auto", ["3"]) == "cuda"
    assert dev.trial_device("auto", []) == "cpu"  # a CPU trial even though this node has a GPU
    assert dev.trial_device("cpu", [0]) == "cpu"
    with pytest.raises(dev.SweeperError, match="granted it no GPU"):
        dev.trial_device("cuda", [])


def test_trial_device_with_a_granted_gpu_but_no_cuda_trains_on_the_cpu(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.trial_device("auto", [1]) == "cpu"
    assert "sees no CUDA device" in caplog.text


def test_amp_dtype_from_compute_capability():
    assert dev.amp_dtype((8, 0)) == torch.bfloat16  # A100
    assert dev.amp_dtype((9, 0)) == torch.bfloat16  # H100
    assert dev.amp_dtype((8, 6)) == torch.bfloat16  # RTX 30xx laptop
    assert dev.amp_dtype((7, 5)) == torch.float16  # T4, RTX 20xx: no native bfloat16
    assert dev.amp_dtype((6, 1)) == torch.float16


def test_fake_cuda_rejects_what_torch_rejects(fake_cuda):
    # the fake resolves devices with torch's own helper: an index-less device is refused where torch refuses it
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_per_process_memory_fraction(0.5, torch.device("cuda"))
    with pytest.raises(TypeError):
        torch.cuda.set_per_process_memory_fraction(1, 0)
    with pytest.raises(ValueError, match="Allowed range"):
        torch.cuda.set_per_process_memory_fraction(1.5, 0)
    with pytest.raises(AssertionError):
        torch.cuda.get_device_properties(1)  # one GPU only
    assert torch.cuda.get_device_properties(torch.device("cuda")).total_memory == 8 * 2**30  # optional index


def test_memory_budget_is_the_share_less_the_contexts():
    gib, ctx = 2**30, dev.CUDA_CONTEXT_BYTES
    assert dev.memory_budget(1.0, 8 * gib) is None  # a whole GPU: no cap
    assert dev.memory_budget(2.0, 8 * gib) is None
    assert dev.memory_budget(0.25, 8 * gib) == int(0.25 * (8 * gib - ctx)) - ctx
    assert dev.memory_budget(1.0, 80 * gib, limit_bytes=6 * gib) == 6 * gib - 2 * ctx  # --gpu-memory 6, whole
    assert dev.memory_budget(0.5, 8 * gib, limit_bytes=80 * gib) == dev.memory_budget(0.5, 8 * gib)


@pytest.mark.parametrize("share", [0.25, 0.5, 1 / 3])
def test_the_caps_leave_room_for_every_context_on_a_6gb_card(share):
    # 1/share trials at once on a 6 GB card (the phase-1 laptop's RTX 3050), plus the driver's context
    # from building the cache: allocator caps and CUDA contexts together must fit the card
    card = 6 * 2**30
    trials = round(1 / share)
    cap = dev.memory_budget(share, card)
    assert cap > 0.5 * 2**30  # still room to train
    assert trials * cap + (trials + 1) * dev.CUDA_CONTEXT_BYTES <= card
    # --gpu-memory 6 on a larger card holds the same arithmetic
    assert dev.memory_budget(share, 80 * 2**30, limit_bytes=card) == cap


def test_cap_memory_sets_the_per_process_fraction_on_an_indexed_device(fake_cuda):
    gib = 2**30
    cuda = torch.device("cuda")  # no index: what resolve_device('auto') gives and every trial uses
    cap = dev.cap_memory(cuda, 0.25)
    assert cap == dev.memory_budget(0.25, 8 * gib)
    assert fake_cuda.calls == [("set_per_process_memory_fraction", (cap / (8 * gib), 0))]
    assert dev.cap_memory(cuda, 1.0) == 8 * gib and len(fake_cuda.calls) == 1  # whole GPU: budget, no cap
    assert dev.cap_memory(torch.device("cpu"), 0.25) is None and len(fake_cuda.calls) == 1
    # --gpu-memory: a whole-GPU run on a larger card still keeps within the stated memory
    assert dev.cap_memory(cuda, 1.0, limit_bytes=6 * gib) == 6 * gib - 2 * dev.CUDA_CONTEXT_BYTES
    assert fake_cuda.fractions[0] == (6 * gib - 2 * dev.CUDA_CONTEXT_BYTES) / (8 * gib)


def test_cap_memory_on_a_second_gpu(monkeypatch):
    from fake_cuda import FakeCuda

    fake = FakeCuda(monkeypatch, count=2)
    dev.cap_memory(torch.device("cuda:1"), 0.5)
    fake.current = 1  # Ray's CUDA_VISIBLE_DEVICES or torch.cuda.set_device make another GPU the current one
    dev.cap_memory(torch.device("cuda"), 0.5)
    assert [c[1][1] for c in fake.calls] == [1, 1]


def test_tokens_go_to_the_gpu_only_when_half_the_budget_holds_them():
    gib = 2**30
    assert dev.tokens_fit(3 * gib, 20 * gib)  # 80 GB card, quarter share, float32 full-size cache
    assert not dev.tokens_fit(3 * gib, int(1.5 * gib))  # 6 GB card, quarter share
    assert not dev.tokens_fit(1, None)  # the CPU


def test_oom_becomes_a_one_line_error_naming_the_share(monkeypatch):
    import sweeper.training.train as tr

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tr, "_train", boom)
    cfg = TrainConfig(**SMALL, epochs=1, gpu_share=0.25)
    with pytest.raises(dev.GpuOutOfMemoryError) as e:
        train(cfg, learnable_data(n_train=2, n_val=2))
    msg = str(e.value)
    assert msg.startswith(OOM_MARK) and "0.25 GPU share" in msg and "--gpus-per-trial" in msg
    assert "\n" not in msg


def test_progress_counts_out_of_memory_failures_apart(tmp_path):
    from sweeper.search.progress import ProgressPrinter
    from sweeper.search.space import load_space

    class FakeTrial:
        def __init__(self, i, status, error=None):
            self.trial_id, self.status, self.config, self.last_result = f"t{i}", status, {"epochs": 2}, {}
            self.experiment_tag = f"{i + 1}_x"
            self.path = str(tmp_path / f"t{i}")
            Path(self.path).mkdir()
            if error:
                (Path(self.path) / "error.txt").write_text(f"Traceback...\n{error}\n")

    oom = FakeTrial(1, "ERROR", f"sweeper.training.device.GpuOutOfMemoryError: {OOM_MARK} during training with a "
                                f"0.25 GPU share")
    other = FakeTrial(2, "ERROR", "sweeper.training.train.TrainingDiverged: training loss became nan")
    trials = [FakeTrial(0, "RUNNING"), oom, other]
    lines = []
    printer = ProgressPrinter(load_space(Path("search_spaces/smoke.yaml")),
                              stream=argparse.Namespace(write=lines.append, flush=lambda: None))
    printer.on_end(trials, oom, "FAILED")
    printer.on_end(trials, other, "FAILED")
    assert "failed 2 (1 out of GPU memory)" in lines[-1]
    assert OOM_MARK in lines[0] and "nan" in lines[1]


def test_checkpoint_tensors_are_cpu_copies():
    data = learnable_data(n_train=4, n_val=2)
    states = []
    train(TrainConfig(**SMALL, epochs=2, optimizer="adamw", lr=1e-3), data,
          on_epoch=lambda rec, run: states.append((run, run.state_dict())))
    run, state = states[-1]

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)

    found = list(tensors(state["optimizer"])) + list(tensors(state["head"]))
    assert len(found) > 10 and all(t.device.type == "cpu" for t in found)
    live = next(iter(run.optimizer.state.values()))["exp_avg"]
    saved = state["optimizer"]["state"][0]["exp_avg"]
    assert saved.data_ptr() != live.data_ptr()  # a copy: later steps do not change the checkpoint


def test_checkpoints_load_with_map_location(tmp_path, monkeypatch):
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (seen.append(k), real(*a, **k))[1])
    torch.save({"w": torch.ones(2)}, tmp_path / "s.pt")
    assert load_checkpoint(tmp_path / "s.pt")["w"].tolist() == [1.0, 1.0]
    assert seen == [{"map_location": "cpu", "weights_only": True}]


def test_no_torch_load_in_the_package_without_map_location():
    # A checkpoint written on a GPU must load on a CPU-only machine: every load maps to the CPU.
    for path in Path("sweeper").glob("*.py"):
        for m in re.finditer(r"torch\.load\(([^)]*)\)", path.read_text()):
            assert "map_location" in m.group(1), f"{path}: torch.load({m.group(1)}) without map_location"


def test_run_trial_releases_memory_when_asha_stops_it(monkeypatch):
    import sweeper.search.trial as tn

    released = []
    monkeypatch.setattr(tn, "release_memory", lambda: released.append(True))

    class Stopped(Exception):
        pass

    def report(metrics, state):
        if metrics["epoch"] == 2:
            raise Stopped  # what Ray's tune.report does to a trial ASHA stops

    with pytest.raises(Stopped):
        tn.run_trial(TrainConfig(**SMALL, epochs=4), learnable_data(n_train=2, n_val=2), report=report)
    assert released == [True]
    tn.run_trial(TrainConfig(**SMALL, epochs=1), learnable_data(n_train=2, n_val=2), report=lambda m, s: None)
    assert released == [True, True]


def test_class_counts_are_computed_once_in_the_driver(monkeypatch):
    import sweeper.data.tokens as ft
    from sweeper.data.dataset import class_pixel_counts
    from sweeper.search.trial import trial_arrays

    data = learnable_data(n_train=4, n_val=2).with_counts()
    arrays = trial_arrays(data)
    assert arrays["train_counts"].tolist() == class_pixel_counts(data.train.labels).tolist()

    def no_counting(*a, **k):
        raise AssertionError("class pixels counted again inside a trial")

    monkeypatch.setattr(ft, "class_pixel_counts", no_counting)
    trial_data = TrainData.from_arrays(**arrays)
    result = train(TrainConfig(**SMALL, epochs=1, class_weights="inverse"), trial_data)
    assert len(result.class_weights) == 10


def test_host_syncs_do_not_grow_with_the_number_of_steps(monkeypatch):
    calls = {"n": 0}
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            calls["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def syncs(n_train):
        calls["n"] = 0
        train(TrainConfig(**SMALL, epochs=2, batch_size=1, train_metrics=False), learnable_data(n_train, 2))
        return calls["n"]

    assert syncs(2) == syncs(10)  # 4 steps or 20: the same handful of reads per epoch


def test_object_store_is_sized_from_the_cache():
    from sweeper.search.ray_local import object_store_bytes

    gb = 10**9
    full = object_store_bytes(int(3.15 * gb), memory_bytes=16 * 2**30)  # full-size float32 cache, 16 GB laptop
    assert full >= 3.15 * gb * 1.2
    assert object_store_bytes(int(0.1 * gb), memory_bytes=16 * 2**30) == int(0.3 * 16 * 2**30)  # Ray's default
    assert object_store_bytes(20 * gb, memory_bytes=16 * 2**30) == int(0.6 * 16 * 2**30)  # never past 60%


def test_driver_drops_its_mapped_copy_of_the_tokens(tmp_path):
    from sweeper.data.cache import drop_resident_pages

    np.save(tmp_path / "t.npy", np.ones((8, 256, 1024), np.float32))
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    assert float(np.asarray(mapped).sum()) == 8 * 256 * 1024
    assert drop_resident_pages(np.asarray(mapped)) is True
    assert float(mapped[7].sum()) == 256 * 1024  # still readable: pages come back from the file
    assert drop_resident_pages(np.ones(3)) is False


def test_prepare_builds_the_cache_on_the_chosen_device_then_frees_it(tmp_path, monkeypatch):
    from fake_cuda import FakeCuda

    from sweeper.cli.inputs import prepare
    from sweeper.model.backbone import FrozenBackbone

    FakeCuda(monkeypatch)
    moves = []

    def to(self, device, *a, **k):  # record the move; the weights stay on the CPU (there is no GPU here)
        moves.append((torch.device(device).type, self.forward_count))
        return self

    monkeypatch.setattr(FrozenBackbone, "to", to)
    args = argparse.Namespace(data=make_dataset(tmp_path / "d", train=2, val=1, size=(112, 56)),
                              backbone="random_vits14", weights=None, device="auto", cache_dir=tmp_path / "c",
                              cache_dtype="float32", allow_unknown_ids=False, quiet=True)
    p = prepare(args, height=56, width=112, label_mode=LabelMode.PHASE1)
    assert moves == [("cuda", 0), ("cpu", 3)]  # onto the GPU before any forward, back after all 3 images
    assert p.data.train_counts is not None  # counted once, here


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_gpu_check_without_cuda_exits_2_with_one_line():
    import os
    import subprocess
    import sys

    p = subprocess.run(["bash", "scripts/checks/gpu_check.sh"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == 2
    assert p.stderr.strip().startswith("gpu_check: no CUDA GPU") and len(p.stderr.strip().splitlines()) == 1


def test_a_float16_amp_run_resumes_with_its_grad_scaler_state(monkeypatch):
    # GPUs before compute capability 8.0 train under float16 autocast with a GradScaler, whose scale grows
    # and backs off as training goes: a resumed run must continue from the scale it had, not start over.
    # On the CPU: a real GradScaler for the CPU stands in for the CUDA one train would make there.
    import sweeper.training.train as tr

    made = []

    def scaler(device, amp):
        s = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)  # doubles after every step
        made.append(s)
        return s

    monkeypatch.setattr(tr, "grad_scaler", scaler)
    cfg = TrainConfig(**SMALL, epochs=3, amp=True)
    data = learnable_data(n_train=4, n_val=2)
    scales, states = [], []

    def on_epoch(record, run):
        scales.append(made[-1].get_scale())
        states.append(run.state_dict())

    full = train(cfg, data, on_epoch=on_epoch).history
    assert scales == [2.0**6, 2.0**8, 2.0**10]  # 2 steps an epoch
    assert states[0]["scaler"]["scale"] == 2.0**6
    scales.clear()
    resumed = train(cfg, data, on_epoch=on_epoch, resume=states[0]).history
    assert scales == [2.0**8, 2.0**10]
    assert [r["val_iou"] for r in resumed] == [r["val_iou"] for r in full]
