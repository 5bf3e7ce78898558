#!/usr/bin/env bash
# GPU benchmark for a lent H200 (about 6 minutes): GPT-2 small, seq 1024, bf16 + torch.compile,
# ours vs transformers. Runs with the machine's python3; wheels it lacks (transformers and its
# needs) can travel in .whl/ (see docs/performance.md). Extra flags go to gpu.py, e.g.
#   benchmarks/gpu.sh --device cpu --steps 2 --warmup 1 --batch 1 --seq 64   (the CPU smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
exec "$PYTHON" benchmarks/gpu.py --out "${OUT:-results/bench}/gpu.json" "$@"
