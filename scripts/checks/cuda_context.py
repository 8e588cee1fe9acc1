"""What one process's CUDA context takes outside torch's allocator, as nvidia-smi sees it.

    python scripts/checks/cuda_context.py      # prints {"used_mb": ..., "reserved_mb": ..., "context_mb": ...}

The process loads what a training process loads (a matmul: cuBLAS; a convolution: cuDNN), then reads its own
line of `nvidia-smi --query-compute-apps`; the context is that figure less what its allocator reserved.
`used_mb` is null where nvidia-smi cannot see the process (a container's PID namespace).
sweeper.training.device.CUDA_CONTEXT_BYTES is what the per-process caps keep back for it (tests/training/test_gpu.py).
"""

from __future__ import annotations

import json
import os
import subprocess

import torch

x = torch.randn(256, 256, device="cuda")
y = torch.nn.functional.conv2d(torch.randn(2, 8, 32, 32, device="cuda"), torch.randn(8, 8, 3, 3, device="cuda"))
(x @ x).sum().item()
y.sum().item()
torch.cuda.synchronize()
smi = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                     capture_output=True, text=True).stdout
used = {int(p): float(m) for p, m in (line.split(",") for line in smi.strip().splitlines() if line.strip())}
mine = used.get(os.getpid())
reserved = torch.cuda.memory_reserved() / 2**20
print(json.dumps({"used_mb": mine, "reserved_mb": reserved, "context_mb": None if mine is None else mine - reserved}))
