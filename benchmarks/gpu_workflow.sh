#!/usr/bin/env bash
# The GPU proof in one go: about 6 minutes on one H200, predicted, not yet run on one
# (docs/performance.md, "GPU").
#
#   benchmarks/gpu_workflow.sh prepare   here, with the project's venv: the bundled sample's shards
#                                        (Snakemake) and the exact `train` and `evaluate` commands the
#                                        rules run with presets/gpu.yaml, all in .gpu/work/
#   benchmarks/gpu_workflow.sh run       on the GPU machine, with its python3 and PYTHONPATH=src only
#                                        (no snakemake or expanda there): carry .gpu
#
# `run` does, most important first, each stage under its own time limit:
#   2  the rules' train and evaluate commands: the loop's tokens/s, MFU and time waiting for batches
#   3  the same command in another folder, SIGKILLed after its first checkpoint and re-run
#   4  evaluate's tokens/s (from 2), `python -m gpt2 generate`, and decoding with/without the KV cache
#   1  one training step, ours vs transformers at vocab 50304, and ours at the preset's shape; top kernels
#   5  peak memory, small and medium at seq 1024, grad_ckpt off and on (eager)
# then prints the table (benchmarks/gpu_summary.py). Everything lands in .gpu/work/results/gpu/ (GPU_RESULTS),
# packed after each stage into $OUT/gpu_results.tgz when OUT is set (the device tool's folder).
# SMOKE=1 runs the same stages on the CPU with a tiny model (tests/test_benchmarks.py does).
# It works in a folder of its own, .gpu/work/ (GPU_WORK=DIR: in DIR), a workflow directory whose
# results/ it may clear; it never touches the repository's own results/.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${GPU_WORK:-$ROOT/.gpu/work}
mkdir -p "$WORK" && cd "$WORK" || exit 2
PYTHON=${PYTHON:-python3}
RESULTS=${GPU_RESULTS:-results/gpu}
SHARDS=results/shards/manifest.json
VOCAB=results/corpus/tokenizer.json  # presets/gpu.yaml: corpus.tokenizer bpe

prepare() {
    local smk=${SNAKEMAKE:-$ROOT/.venv/bin/snakemake}
    local args=(-s "$ROOT/Snakefile" --directory "$WORK" --configfile "$ROOT/presets/gpu.yaml")
    "$smk" "${args[@]}" --cores "$(nproc)" "$SHARDS" "$VOCAB" || exit 1
    mkdir -p .gpu
    # --cores 8: the preset's threads, as a GPU node with 8 or more cores gives them.
    "$smk" "${args[@]}" --cores 8 --dry-run --printshellcmds --forcerun train results/eval_small.json |
        awk '/^rule /{rule = $2; sub(/:$/, "", rule)}
             /^Shell command: / && (rule == "train" || rule == "evaluate") {sub(/^Shell command: /, ""); print > (".gpu/" rule ".sh")}'
    for f in train evaluate; do
        test -s ".gpu/$f.sh" || { echo "error: no $f command in Snakemake's dry run" >&2; exit 1; }
        echo "$f: $(cat ".gpu/$f.sh")"
    done
    du -sh results/shards "$VOCAB" .gpu
}

# stage NAME SECONDS COMMAND...: run under a time limit, log to $RESULTS/NAME.log, record the outcome.
stage() {
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s%N)
    echo "== $name (limit ${limit} s)"
    timeout --signal=KILL "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((($(date +%s%N) - start) / 1000000))" >>"$RESULTS/stages.tsv"
    tail -n 3 "$RESULTS/$name.log"
    pack
    return $rc
}

pack() {  # what the device tool brings back: at most 8 files from $OUT, so one archive
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_results.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"; fi
}

train_cmd() {  # the rule's command, its outputs and log moved to folder $1 (`small` as the rule has it)
    sed -e "s#results/train/small#results/train/$1#g" -e "s#results/logs/train/small.log#results/logs/train/$1.log#" \
        .gpu/train.sh
}

killed_after_first_checkpoint() {  # start the training in the background, SIGKILL it after its first checkpoint
    bash -c "exec $(train_cmd resume) $TRAIN_EXTRA" &
    local pid=$!
    until compgen -G "results/train/resume/checkpoints/step_*.pt" >/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "training ended before its first checkpoint"; return 1; }
        sleep 0.2
    done
    kill -KILL "$pid" || { echo "training finished before it could be killed"; return 1; }
    wait "$pid"
    echo "killed with $(ls results/train/resume/checkpoints/step_*.pt) written"
    cp results/logs/train/resume.log "$RESULTS/train_resume_killed.log"
}

run() {
    mkdir -p "$RESULTS" results/logs/train results/logs/evaluate
    rm -rf "$RESULTS"/* results/train/small results/train/resume results/eval_small.json
    export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    # The rules' commands call `python`; the GPU image has python3 (a script, as a venv's python
    # symlinked elsewhere would lose its venv).
    local shim
    shim=$(mktemp -d) && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PYTHON")" >"$shim/python" &&
        chmod +x "$shim/python" && export PATH="$shim:$PATH"
    local gpu=(--device cuda) speed=(--steps 10 speed --warmup 3) memory=(--steps 3 memory) vocab
    vocab=$("$PYTHON" -c "import json; print(json.load(open('$SHARDS'))['vocab_size'])")
    local micro
    micro=$(grep -o -- '--micro_batch=[0-9]*' .gpu/train.sh | cut -d= -f2)
    # hf last: should transformers fail to compile, ours at both shapes are measured already.
    local shapes=(--shape "ours:50304:$micro" --shape "ours:$vocab:$micro" --shape "hf:50304:$micro")
    TRAIN_EXTRA="" EVAL_EXTRA=""
    if [ "${SMOKE:-0}" = 1 ]; then
        gpu=(--device cpu --seq 32) speed=(--steps 2 speed --warmup 1 --size tiny)
        memory=(--steps 1 memory --sizes tiny --vocab 512 --batch 2)
        shapes=(--shape ours:512:2 --shape "ours:$vocab:2" --shape hf:512:2)
        TRAIN_EXTRA="--gpus 0 --device cpu --threads 1 --layers 2 --heads 2 --dims 64 --seq_len 64 --steps 24
                     --batch_tokens 1024 --micro_batch 8 --batch_eval 8 --warmup_ratio 0.08 --eval_every 4
                     --eval_tokens 1024 --log_every 2 --checkpoint_every 6"
        EVAL_EXTRA="--device cpu --threads 1"
    fi
    TRAIN_EXTRA=$(echo $TRAIN_EXTRA)  # one line
    {
        date -u
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -n 3
        "$PYTHON" -c "import torch, transformers, platform; print('python', platform.python_version(), 'torch',
                      torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
        echo "train: $(cat .gpu/train.sh) $TRAIN_EXTRA"
        echo "evaluate: $(cat .gpu/evaluate.sh) $EVAL_EXTRA"
    } >"$RESULTS/env.txt" 2>&1

    stage train 180 bash -c "$(train_cmd small) $TRAIN_EXTRA"
    cp results/logs/train/small.log "$RESULTS/train_small.log"
    cp results/train/small/metrics.csv "$RESULTS/metrics_small.csv"
    stage evaluate 60 bash -c "$(cat .gpu/evaluate.sh) $EVAL_EXTRA" && cp results/eval_small.json "$RESULTS/"
    cp results/logs/evaluate/small.log "$RESULTS/evaluate_small.log"

    export -f train_cmd killed_after_first_checkpoint
    export RESULTS TRAIN_EXTRA
    stage resume_killed 120 bash -c killed_after_first_checkpoint
    stage resume 120 bash -c "$(train_cmd resume) $TRAIN_EXTRA"
    cp results/logs/train/resume.log "$RESULTS/train_resume.log"
    cp results/train/resume/metrics.csv "$RESULTS/metrics_resume.csv"

    stage generate 45 python -m gpt2 generate --model_path results/train/small/model.pt --vocab_path "$VOCAB" \
        --prompt "The history of" --max_tokens 64 --temperature 0 "${gpu[@]:0:2}"
    stage decode 60 "$PYTHON" "$ROOT/benchmarks/gpu.py" "${gpu[@]}" --out "$RESULTS/decode.json" decode \
        --model_path results/train/small/model.pt

    stage speed 240 "$PYTHON" "$ROOT/benchmarks/gpu.py" "${gpu[@]}" --out "$RESULTS/speed.json" "${speed[@]}" \
        "${shapes[@]}" --profile "$RESULTS/profile.txt"
    stage memory 90 "$PYTHON" "$ROOT/benchmarks/gpu.py" "${gpu[@]}" --out "$RESULTS/memory.json" "${memory[@]}"

    "$PYTHON" "$ROOT/benchmarks/gpu_summary.py" "$RESULTS"
    local rc=$?
    pack
    return $rc
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare | run   (see the comment at its top)" >&2; exit 2 ;;
esac
