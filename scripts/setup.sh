#!/usr/bin/env bash
# Create ./.venv and install sweeper into it.   Usage: scripts/setup.sh [--test]
#
# torch comes first, chosen for the machine: with an NVIDIA GPU the default
# (CUDA) build; without one a CPU build, so a laptop or CI box does not pull
# several GB of CUDA libraries. Then sweeper and its other dependencies,
# whose torch range accepts the build already there. --test adds pytest and
# Meta's reference DINOv2 code (its stale dependency pins are not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch with CUDA"
    "${pip[@]}" install torch
  else
    echo "setup: no GPU: installing a CPU build of torch"
    cpu_torch=${SWEEPER_CPU_TORCH:-torch==2.13.0}
    wheels=$(mktemp -d)
    # A CPU wheel already on this machine's disk (pip's find-links) is installed as that file, so
    # pip cannot swap in a CUDA build; its dependencies come from the usual index. Otherwise
    # PyTorch's CPU index, which also serves torch's dependencies.
    if "${pip[@]}" download --no-index --no-deps "$cpu_torch" -d "$wheels" >/dev/null 2>&1; then
      "${pip[@]}" install "$wheels"/torch-*.whl
    else
      "${pip[@]}" install "$cpu_torch" --index-url https://download.pytorch.org/whl/cpu
    fi
    rm -rf "$wheels"
  fi
fi

if [ "$want_tests" = 1 ]; then
  "${pip[@]}" install -e ".[test]"
  "${pip[@]}" install --no-deps "dinov2==0.0.1.dev2"
else
  "${pip[@]}" install -e .
fi
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
