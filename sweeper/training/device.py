"""Where a run's tensors live: the one device decision, AMP precision, a GPU share's memory cap and release.

Every command and every Ray trial decides its device here. A trial decides
from the GPUs Ray granted it, never from the driver's machine: on a cluster
the driver may have no GPU while its workers do, and a resumed sweep may run
on another machine than the one that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from typing import Sequence

import torch

from sweeper.errors import OOM_MARK, SweeperError

log = logging.getLogger(__name__)

TOKENS_SHARE_OF_BUDGET = 0.5  # cached tokens go onto the GPU only if they take at most this part of the share


class GpuOutOfMemoryError(SweeperError):
    """A run needed more GPU memory than its share allows."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; an unavailable cuda is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SweeperError(f"device '{name}' was asked for but torch sees no CUDA GPU (use --device cpu or auto)")
    return torch.device(name)


def gpu_count() -> int:
    """CUDA GPUs this process sees (0 without CUDA): what a local Ray offers and what --gpus-per-trial divides."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def trial_device(requested: str, gpu_ids: Sequence[int | str]) -> str:
    """The device a Ray trial trains on, from the GPU ids Ray granted it (`ray.get_gpu_ids()`).

    Ray points CUDA_VISIBLE_DEVICES at the granted GPUs, so 'cuda' is the first of them.
    """
    if requested == "cpu":
        return "cpu"
    if gpu_ids:
        if not torch.cuda.is_available():  # a logical GPU (tests), or a CPU build of torch on a GPU node
            log.warning("Ray granted this trial GPU %s but torch on its node sees no CUDA device: training on "
                        "the CPU (the trial's config records it)", ",".join(map(str, gpu_ids)))
            return "cpu"
        return "cuda"
    if requested.startswith("cuda"):
        raise SweeperError("the trial asks for a CUDA device but Ray granted it no GPU (--gpus-per-trial is 0)")
    return "cpu"


def amp_dtype(capability: tuple[int, int]) -> torch.dtype:
    """Autocast precision for a GPU of this compute capability: bfloat16 where native (>= 8.0), else float16."""
    return torch.bfloat16 if tuple(capability) >= (8, 0) else torch.float16


def autocast(device: torch.device, enabled: bool):
    """Mixed precision for the head on CUDA; a no-op on the CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(torch.cuda.get_device_capability(device)))


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler | None:
    """A GradScaler where autocast runs in float16 (bfloat16 needs none)."""
    if amp and device.type == "cuda" and amp_dtype(torch.cuda.get_device_capability(device)) == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


# What one process's CUDA context holds outside the caching allocator (the per-process cap does not see it):
# kernels, cuBLAS/cuDNN handles. Measured on the GPU check's card (results/gpu/gpu_check.json, "context_mb").
CUDA_CONTEXT_BYTES = 512 * 2**20


def memory_budget(share: float, total_bytes: int, *, limit_bytes: int | None = None) -> int | None:
    """Allocator bytes a process holding `share` of a GPU may take; None = uncapped (a whole card to itself).

    The card counts as `limit_bytes` when that is smaller (--gpu-memory: a smaller card's figure, or a shared
    GPU). One context is kept back for the driver (it built the cache on the GPU), and each process's share
    loses its own context: 1/share processes plus the driver then fit the card, contexts included.
    """
    card = min(total_bytes, limit_bytes) if limit_bytes else total_bytes
    if (share >= 1 and card == total_bytes) or share <= 0:
        return None
    return max(0, int(min(share, 1.0) * (card - CUDA_CONTEXT_BYTES)) - CUDA_CONTEXT_BYTES)


def cap_memory(device: torch.device, share: float, *, limit_bytes: int | None = None) -> int | None:
    """Cap this process's CUDA allocator at its share of the GPU (`memory_budget`); returns the run's memory
    budget in bytes: the cap, the whole card when uncapped, None on the CPU."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()  # torch wants an index
    total = torch.cuda.get_device_properties(index).total_memory
    cap = memory_budget(share, total, limit_bytes=limit_bytes)
    if cap is None:
        return total
    torch.cuda.set_per_process_memory_fraction(cap / total, index)
    return cap


def tokens_fit(token_bytes: int, budget_bytes: int | None) -> bool:
    """Whether a split's cached tokens go onto the GPU: they may take half the run's memory budget."""
    return budget_bytes is not None and token_bytes <= TOKENS_SHARE_OF_BUDGET * budget_bytes


def oom_message(share: float, cap_bytes: int | None, where: str) -> str:
    """One line for an out-of-memory run: the share, the cap, and what to change."""
    cap = f", capped at {cap_bytes / 2**30:.1f} GiB" if cap_bytes else ""
    return (f"{OOM_MARK} during {where} with a {share:g} GPU share{cap}: raise --gpus-per-trial, lower "
            f"--max-concurrent or --batch size, or use --cache-dtype float16 / --amp")


def release_memory() -> None:
    """Hand a finished (or stopped) run's memory back: CUDA's cached blocks and glibc's freed heap."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # a reused trial process otherwise keeps its largest trial's peak
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
