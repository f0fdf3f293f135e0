#!/usr/bin/env bash
# Issue 16's study: structured movement pruning (heads + FFN neurons, removed at export), BERT vs BERMo from one
# checkpoint, with and without distillation, accuracy against measured speed-up. Design: experiments/README.md,
# "Issue 16: structured pruning — design". Stages in order, each resumable (its runs are cached in its folder); a
# stage starts only before STOP_AT (UTC, HH:MM; default: no stop), so that what did not run is reported as not run.
#   bash experiments/structured_study.sh [OUT=outputs/exp] [GLUE=../shared/data/glue]
set -euo pipefail
OUT="${1:-outputs/exp}"; GLUE="${2:-../shared/data/glue}"
STOP_AT="${STOP_AT:-}"
COMMON=(--study structured --max_train_steps 250 --per_device_train_batch_size 16 --learning_rate 1e-4
        --jobs 2)

source "$(dirname "$0")/stage.sh"  # stage NAME COMMAND...: run unless past STOP_AT

# 1. SST-2 (GLUE's training set, GLUE's dev set), 3 seeds, kept fractions 0.5 / 0.25 / 0.1.
stage structured-sst2 bermo-experiment pruning --task_name sst2 --glue_dir "$GLUE" --max_length 64 \
    --fractions 0.5 0.25 0.1 --seeds 0 1 2 "${COMMON[@]}" --output_dir "$OUT/structured-sst2"
# 2. MRPC (GLUE's 3,668 training rows, its 408 dev rows; accuracy), 2 seeds, kept fractions 0.5 / 0.25.
stage structured-mrpc bermo-experiment pruning --task_name mrpc --glue_dir "$GLUE" --max_length 128 \
    --fractions 0.5 0.25 --seeds 0 1 "${COMMON[@]}" --output_dir "$OUT/structured-mrpc"
