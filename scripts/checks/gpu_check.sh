#!/usr/bin/env bash
# The GPU check (scripts/checks/gpu_check.py says what it runs): at most 9.5 minutes on one GPU, stages timed to 9.
# Writes results/gpu/gpu_check.json and prints a table. Exits 2 where torch sees no CUDA GPU.
# Runs from the source tree with whatever python is first on PATH (or $PYTHON): a GPU box with
# only PyTorch, numpy, pandas, pillow and seaborn runs everything but the Ray part, and says so.
set -uo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to torch ($python): nothing to check on this machine" >&2
  exit 2
fi
PYTHONPATH=. exec timeout 570 "$python" scripts/checks/gpu_check.py
