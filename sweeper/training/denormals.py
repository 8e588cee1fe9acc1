"""Flush-to-zero for CPU training: no subnormal floats, so no subnormal stalls.

Where they come from: GELU's backward multiplies the incoming gradient by the normal density
exp(-x^2/2)/sqrt(2 pi), which falls below float32's smallest normal (1.2e-38) once a confident head drives a
pre-activation past |x| ~ 13. AdamW trials at lr ~1e-3 get there within an epoch or two; phase 1's SGD at
1e-4 never does. Those gradients then flow through the depthwise conv. Many Intel cores handle every
operation on a subnormal in microcode, about 100x slower: the issue that found this measured AdamW epochs
7-17x slower than SGD's on a 2-core Xeon. FTZ (results flushed to zero) and DAZ (inputs read as zero) remove
them; a value below 1.2e-38 changes no float32 sum it joins.

The x86 MXCSR register that holds FTZ/DAZ is per thread. `torch.set_flush_denormal` sets only the calling
thread's, while torch's intra-op work (elementwise ops, oneDNN convolutions, MKL) also runs on the calling
thread's OpenMP team, whose threads keep whatever they had when they were created. So `flush_denormals`
sets the caller and every thread of its team, through one OpenMP parallel region (libgomp's `GOMP_parallel`,
also exported by LLVM's libomp), and restores each thread's own setting when it exits. GPUs need none of
this: CUDA cores compute float32 subnormals at full speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from functools import lru_cache
from typing import Callable, Iterator

import torch

log = logging.getLogger(__name__)

SUBNORMAL_BITS = 0x00400000  # float32 5.9e-39, a subnormal, written as bits: a float literal is flushed on the way in


def subnormals(n: int) -> torch.Tensor:
    """n float32 subnormals, whatever the calling thread's flush setting."""
    return torch.full((n,), SUBNORMAL_BITS, dtype=torch.int32).view(torch.float32)


def thread_flushes() -> bool:
    """Whether the calling thread flushes subnormals (DAZ reads one as 0; a one-element op runs on this thread)."""
    return float(subnormals(1) * 1.0) == 0.0


def count_subnormal(t: torch.Tensor) -> int:
    """How many elements of a floating-point tensor are subnormal (0 for other dtypes).

    Read from the bits, not the values: under DAZ a comparison reads a subnormal as 0, so a value test run
    inside `flush_denormals` would never see one.
    """
    if not t.is_floating_point():
        return 0
    as_int = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
              torch.bfloat16: torch.int16}[t.dtype]
    magnitude = t.detach().contiguous().view(as_int) & torch.iinfo(as_int).max  # the sign bit cleared
    smallest_normal = torch.tensor(torch.finfo(t.dtype).tiny, dtype=t.dtype).view(as_int)
    return int(((magnitude > 0) & (magnitude < smallest_normal)).sum())


_PARALLEL_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@lru_cache(maxsize=1)
def _openmp_parallel() -> Callable | None:
    """libgomp's `GOMP_parallel(fn, data, num_threads, flags)` from the OpenMP runtime torch loaded, or None."""
    torch.ones(1).add_(1)  # make sure torch's libraries (and their OpenMP runtime) are loaded
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:  # not Linux: no /proc
        return None
    for path in sorted(p for p in paths if ".so" in p):
        try:
            fn = ctypes.CDLL(path).GOMP_parallel  # already loaded: dlopen hands back the same library
        except (OSError, AttributeError):
            continue
        fn.argtypes = [_PARALLEL_FN, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        fn.restype = None
        return fn
    return None


def set_team_flush(on: bool) -> bool:
    """Flush-to-zero on (or off) for the calling thread and every thread of its OpenMP team, until changed again.

    For measurements and tests that need a known setting; training uses `flush_denormals`, which restores.
    """
    return _on_team(lambda: torch.set_flush_denormal(on))


def _on_team(body: Callable[[], None]) -> bool:
    """Run `body` once on every thread of the calling thread's OpenMP team (the caller included).

    False where no OpenMP runtime was found: then `body` ran on the calling thread only.
    """
    parallel = _openmp_parallel()
    threads = torch.get_num_threads()
    if parallel is None or threads <= 1:
        body()
        return parallel is not None
    errors: list[BaseException] = []

    def each(_data) -> None:
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - an exception cannot cross the C frame: re-raised below
            errors.append(e)

    parallel(_PARALLEL_FN(each), None, threads, 0)  # ctypes drops the GIL; each callback takes it back
    if errors:
        raise errors[0]
    return True


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """FTZ/DAZ on the calling thread and its OpenMP team inside the block; every thread's own setting after.

    A no-op where the CPU cannot flush (`torch.set_flush_denormal` says so) or `enabled` is False.
    """
    if not enabled:
        yield
        return
    before: dict[int, bool] = {}
    lock = threading.Lock()

    def flush_on() -> None:
        was = thread_flushes()
        with lock:
            before[threading.get_ident()] = was
        torch.set_flush_denormal(True)

    supported = torch.set_flush_denormal(thread_flushes())  # False: this CPU has no FTZ/DAZ (changes nothing)
    if not supported:
        log.debug("this CPU cannot flush subnormal floats: training runs without flush-to-zero")
        yield
        return
    caller_before = thread_flushes()
    if not _on_team(flush_on):
        log.debug("no OpenMP runtime found: subnormals are flushed on the calling thread only")
    try:
        yield
    finally:
        _on_team(lambda: torch.set_flush_denormal(before.get(threading.get_ident(), caller_before)))
