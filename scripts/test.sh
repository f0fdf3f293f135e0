#!/usr/bin/env bash
# Set up .venv and run the whole test suite, transformers' common model tests on BERMo, then the remote-code round
# trip under transformers 4.57
# in a virtual environment of its own that does not have our package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/python -m pytest -q "$@"

# transformers' own common model tests (ModelTesterMixin, from the installed version's sdist) on BERMo's classes
bash scripts/transformers_common_tests.sh

TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
[ -x .venv-tf4/bin/python ] || "${PYTHON:-python3}" -m venv .venv-tf4
.venv-tf4/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv-tf4/bin/python -m pip install --quiet "transformers>=4.57,<4.58" safetensors
roundtrip="$(mktemp -d)"
trap 'rm -rf "$roundtrip"' EXIT
.venv/bin/python tests/remote_code_roundtrip.py write "$roundtrip"
HF_MODULES_CACHE="$roundtrip/modules" .venv-tf4/bin/python tests/remote_code_roundtrip.py check "$roundtrip"
