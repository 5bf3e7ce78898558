#!/usr/bin/env bash
# Worked example: train like the reference GPT-2 repo's run_train.sh, on the
# corpus the workflow built (`snakemake --cores 8 results/corpus/vocab.txt`).
# Re-running it resumes from the newest checkpoint. Override any value, e.g.
#   STEPS=2000 LAYERS=6 DIMS=384 HEADS=6 scripts/run_train.sh
set -euo pipefail
CORPUS=${CORPUS:-results/corpus}
OUT=${OUT:-results/scripts}
PYTHON=${PYTHON:-.venv/bin/python}

"$PYTHON" -m gpt2 train --reference_defaults \
    --train_corpus "$CORPUS/corpus.train.txt" \
    --eval_corpus "$CORPUS/corpus.test.txt" \
    --vocab_path "$CORPUS/vocab.txt" \
    --save_model_path "$OUT/model.pt" \
    --save_checkpoint_path "$OUT/checkpoints" \
    --seq_len "${SEQ_LEN:-64}" \
    --layers "${LAYERS:-2}" \
    --heads "${HEADS:-2}" \
    --dims "${DIMS:-64}" \
    --rate 4 \
    --dropout 0.1 \
    --batch_train "${BATCH:-32}" \
    --batch_eval 64 \
    --base_lr "${LR:-3e-3}" \
    --wd_rate 1e-2 \
    --warmup_ratio 0.05 \
    --total_steps "${STEPS:-200}" \
    --eval_steps "${EVAL_STEPS:-50}" \
    --save_steps "${SAVE_STEPS:-50}" \
    ${GPUS:+--gpus "$GPUS"} ${USE_AMP:+--use_amp}
