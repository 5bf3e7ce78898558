#!/usr/bin/env bash
# Worked example: evaluate the model of scripts/run_train.sh like the
# reference repo's run_eval.sh; prints the JSON report and keeps a copy.
set -euo pipefail
CORPUS=${CORPUS:-results/corpus}
OUT=${OUT:-results/scripts}
PYTHON=${PYTHON:-.venv/bin/python}

"$PYTHON" -m gpt2 evaluate \
    --model_path "$OUT/model.pt" \
    --eval_corpus "$CORPUS/corpus.test.txt" \
    --train_corpus "$CORPUS/corpus.train.txt" \
    --vocab_path "$CORPUS/vocab.txt" \
    --batch_eval 64 \
    --total_steps -1 \
    --output "$OUT/eval.json" \
    ${USE_GPU:+--use_gpu}
