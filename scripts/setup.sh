#!/usr/bin/env bash
# Create .venv (if missing) and install BERMo with its test extras into it.
# torch is installed first, so that pip does not pull a multi-GB CUDA build to satisfy our range;
# set TORCH_SPEC to choose another build (e.g. TORCH_SPEC="torch" on a CUDA machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import torch, transformers, bermo; print(f'bermo {bermo.__version__}: torch {torch.__version__}, transformers {transformers.__version__}')"
