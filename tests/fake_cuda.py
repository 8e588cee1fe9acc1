"""A fake of `torch.cuda` for CPU tests of the CUDA paths: it rejects what real torch rejects.

Every CPU test that pretends a GPU exists goes through `FakeCuda` (the `fake_cuda` fixture in conftest.py),
never through a lambda that accepts anything: a lambda once let `set_per_process_memory_fraction(f,
torch.device("cuda"))` pass here while real torch refused it on every GPU. Each fake resolves its device
argument with torch's own `torch.cuda._utils._get_device_index`, with the same `optional` flag the real
function uses, checks its other arguments as torch does, and records the call (device as an index).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.cuda._utils import _get_device_index

GIB = 2**30


class FakeCuda:
    """`count` GPUs of `total_gib` each and compute capability `capability`, installed with monkeypatch."""

    def __init__(self, monkeypatch, *, count: int = 1, total_gib: float = 8.0, capability=(8, 6),
                 name: str = "Fake GPU", free_gib: float | None = None) -> None:
        self.count, self.total = count, int(total_gib * GIB)
        self.free = int((total_gib if free_gib is None else free_gib) * GIB)
        self.capability, self.name = tuple(capability), name
        self.current = 0
        self.calls: list[tuple[str, Any]] = []
        self.fractions: dict[int, float] = {}
        self.initialized = False
        for attr in ("is_available", "device_count", "current_device", "get_device_properties",
                     "get_device_capability", "get_device_name", "set_per_process_memory_fraction",
                     "mem_get_info", "is_initialized", "empty_cache", "synchronize", "max_memory_allocated",
                     "max_memory_reserved", "memory_reserved", "reset_peak_memory_stats"):
            monkeypatch.setattr(torch.cuda, attr, getattr(self, attr))

    def _index(self, device, *, optional: bool) -> int:
        index = _get_device_index(device, optional=optional)  # torch's own check: ValueError as torch raises
        if not 0 <= index < self.count:
            raise AssertionError("Invalid device id")  # what get_device_properties raises
        return index

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.count

    def current_device(self) -> int:
        return self.current

    def is_initialized(self) -> bool:
        return self.initialized

    def get_device_properties(self, device=None):
        index = self._index(device, optional=True)
        self.initialized = True
        return argparse.Namespace(total_memory=self.total, name=self.name, major=self.capability[0],
                                  minor=self.capability[1], index=index)

    def get_device_capability(self, device=None) -> tuple[int, int]:
        p = self.get_device_properties(device)
        return p.major, p.minor

    def get_device_name(self, device=None) -> str:
        return self.get_device_properties(device).name

    def set_per_process_memory_fraction(self, fraction, device=None) -> None:
        index = self._index(self.current if device is None else device, optional=False)
        if not isinstance(fraction, float):
            raise TypeError("Invalid type for fraction argument, must be `float`")
        if fraction < 0 or fraction > 1:
            raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
        self.initialized = True
        self.fractions[index] = fraction
        self.calls.append(("set_per_process_memory_fraction", (fraction, index)))

    def mem_get_info(self, device=None) -> tuple[int, int]:
        self._index(self.current if device is None else device, optional=True)
        return self.free, self.total

    def empty_cache(self) -> None:
        self.calls.append(("empty_cache", None))

    def synchronize(self, device=None) -> None:
        self._index(device, optional=True)

    def max_memory_allocated(self, device=None) -> int:
        self._index(device, optional=True)
        return 0

    max_memory_reserved = memory_reserved = max_memory_allocated

    def reset_peak_memory_stats(self, device=None) -> None:
        self._index(device, optional=True)
