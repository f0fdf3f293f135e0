#!/usr/bin/env bash
# Issue 15's study of BERMo's mix settings, stage by stage, in the order fixed on experiments/README.md:
# screening -> SST-2 confirmation -> pruning stability cells -> MRPC -> QQP -> longer SST-2 training.
# Each stage resumes where it stopped (the runs are cached under its output folder); a stage starts only before
# STOP_AT (UTC, HH:MM; default: no stop), so that what did not run is reported as not run.
#   bash experiments/mix_study.sh [OUT=outputs/exp] [GLUE=../shared/data/glue] [DATA=outputs/experiment_data/glue]
set -euo pipefail
OUT="${1:-outputs/exp}"; GLUE="${2:-../shared/data/glue}"; DATA="${3:-outputs/experiment_data/glue}"
STOP_AT="${STOP_AT:-}"
COMMON=(--max_train_steps 200 --learning_rate 1e-4 --per_device_train_batch_size 16 --max_length 128 --jobs 2)
CONFIRM_SEEDS=(10 11 12)

source "$(dirname "$0")/stage.sh"  # stage NAME COMMAND...: run unless past STOP_AT

# 1. Screening: one factor at a time around last:0.8 / mix lr 1e-2 / no dropout, simplest first; SST-2 with a dev
#    set carved from GLUE's training set; the rule reads the final evaluation only, so every 40 steps suffices.
stage screening bermo-experiment mix-init --task_name sst2 --glue_dir "$GLUE" --dev_from_train 872 --data_seed 0 \
    --variants uniform,0.01,0 last:0.5,0.01,0 last:0.8,0.01,0 last:0.95,0.01,0 last:0.8,0.001,0 last:0.8,0.1,0 \
               last:0.8,0.01,0.1 \
    --seeds 0 1 --eval_steps 40 "${COMMON[@]}" --output_dir "$OUT/mix-screen-sst2"

CHOSEN=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["chosen_variant"])' \
         "$OUT/mix-screen-sst2/summary.json")
VARIANTS=(uniform,0.01,0)
[ "$CHOSEN" = "uniform,0.01,0" ] || VARIANTS+=("$CHOSEN")
IFS=, read -r C_INIT C_LR C_DROPOUT <<< "$CHOSEN"
echo "chosen by the screening's rule: $CHOSEN"

# 2. Confirmation on held-out data (GLUE's SST-2 dev set), fresh seeds, the page's protocol (every 20 steps).
stage confirm-sst2 bermo-experiment mix-init --task_name sst2 --glue_dir "$GLUE" --variants "${VARIANTS[@]}" \
    --seeds "${CONFIRM_SEEDS[@]}" --eval_steps 20 "${COMMON[@]}" --output_dir "$OUT/mix-confirm-sst2"
# 3. Pruning stability: the movement cells of the 1,000-row protocol, seeds 3-8, BERMo with the chosen setting.
stage pruning bermo-experiment pruning --study stability --task_name sst2 --glue_dir "$GLUE" --train_rows 1000 \
    --methods movement --fractions 0.15 0.05 --seeds 3 4 5 6 7 8 --mix_init "$C_INIT" --mix_learning_rate "$C_LR" \
    --mix_dropout "$C_DROPOUT" --jobs 2 --output_dir "$OUT/mix-pruning-stability-1k-movement"
# 4-5. Confirmation on a task not used so far (MRPC, F1), then QQP (our split, F1).
stage confirm-mrpc bermo-experiment mix-init --task_name mrpc --glue_dir "$GLUE" --variants "${VARIANTS[@]}" \
    --seeds "${CONFIRM_SEEDS[@]}" --eval_steps 20 "${COMMON[@]}" --output_dir "$OUT/mix-confirm-mrpc"
stage confirm-qqp bermo-experiment mix-init --task_name qqp --glue_dir "$DATA" --variants "${VARIANTS[@]}" \
    --seeds "${CONFIRM_SEEDS[@]}" --eval_steps 20 "${COMMON[@]}" --output_dir "$OUT/mix-confirm-qqp"
# 6. Longer training: 5x the screening budget on SST-2 (GLUE dev), 3 seeds.
stage longer-sst2 bermo-experiment mix-init --task_name sst2 --glue_dir "$GLUE" --variants "${VARIANTS[@]}" \
    --seeds 20 21 22 --eval_steps 100 --max_train_steps 1000 --learning_rate 1e-4 --per_device_train_batch_size 16 \
    --max_length 128 --jobs 2 --output_dir "$OUT/mix-longer-sst2"
