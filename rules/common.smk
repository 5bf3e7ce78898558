# Shared by the rules: config validation, the dump's file names, and the flags the rules
# pass to `python -m gpt2` -- rendered from the declarations in src/gpt2/params.py.

import glob
import os
import re
import shlex
import sys

from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from gpt2 import UserError
from gpt2.config import baseline_names, check_config
from gpt2.dump import dump_name
from gpt2.launch import (
    eval_memory_mb,
    hf_param_count,
    job_layout,
    launch_command,
    param_count,
    train_memory_mb,
)
from gpt2.params import (
    Architecture,
    BaselineParams,
    CorpusParams,
    DownstreamParams,
    DumpParams,
    EvaluateParams,
    Hardware,
    ReportParams,
    ShardsParams,
    TrainParams,
    cli_flags,
    from_values,
)

try:
    check_config(config)
except UserError as exc:
    sys.exit(f"error: {exc}")

# Jobs run `python -m gpt2` from this checkout's sources, with the interpreter Snakemake
# runs under (the project's .venv) unless --sdm conda gives each rule its environment.
# (Snakemake formats the prefix too, hence the doubled braces.)
SRC = shlex.quote(os.path.join(workflow.basedir, "src"))
PYTHONPATH_PREFIX = f"export PYTHONPATH={SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    shell.prefix(PYTHONPATH_PREFIX)
else:
    BIN = shlex.quote(os.path.dirname(sys.executable))
    shell.prefix(f"export PATH={BIN}:$PATH; {PYTHONPATH_PREFIX}")

# Every dump is a listing of one or more files in its folder (the sample, a URL or a path: one
# file); the corpus is built from them in scatter-gather jobs whose parts live in results/parts/.
DUMP_NAME = dump_name(from_values(DumpParams, config["dump"]))
DUMP_DIR = f"resources/dumps/{DUMP_NAME}"
DUMP_INFO = f"{DUMP_DIR}/dump.json"
BUCKETS = [f"results/parts/buckets/{b}" for b in range(config["corpus"]["buckets"])]
INPUT_VOCAB = (
    [config["corpus"]["input_vocab"]] if config["corpus"]["input_vocab"] else []
)
# The vocabulary every later stage reads: expanda's WordPiece vocab.txt or the BPE's tokenizer.json.
VOCAB = "results/corpus/" + (
    "tokenizer.json" if config["corpus"]["tokenizer"] == "bpe" else "vocab.txt"
)
MODELS = config["models"]
TRAIN = config["train"]
# The model the test split scores: the final one, or the one with the lowest validation loss.
EVAL_MODEL = f"results/train/{{model}}/{'best' if config['evaluate']['checkpoint'] == 'best' else 'model'}.pt"
REPORT_MODELS = config["report"]["models"]
# Other causal LMs scored on the same test articles: results/baseline_{name}.json per hub id or folder.
BASELINES = baseline_names(config["baselines"]["models"])


wildcard_constraints:
    model="|".join(sorted(MODELS)),
    baseline="|".join(map(re.escape, sorted(BASELINES))) or "(?!)",


def dump_flags():
    """The dump's settings; the URL or path of a source not in use is left out, so editing it reruns nothing."""
    d = config["dump"]
    unused = {
        "url": d["url"] if d["source"] == "url" else "",
        "path": d["path"] if d["source"] == "path" else "",
    }
    return cli_flags(DumpParams, {**d, **unused})


def corpus_flags(*names):
    """The corpus settings a job uses (only those: editing another one reruns nothing)."""
    others = tuple(f for f in config["corpus"] if f not in names)
    return cli_flags(CorpusParams, config["corpus"], skip=others)


def dump_pieces():
    """(file, index, piece, pieces) of every extraction job, once list_dump has run."""
    from gpt2.corpus import plan_pieces

    listing = checkpoints.list_dump.get().output[0]
    return plan_pieces(listing, config["corpus"]["extract_jobs"])


def extracted_dirs(wildcards=None):
    return [f"results/parts/extracted/{f}/{k}" for f, _, k, _ in dump_pieces()]


def dump_files(wildcards=None):
    """The dump's data files, once list_dump has run (gather_corpus records their sums)."""
    return sorted({f"{DUMP_DIR}/{f}" for f, _, _, _ in dump_pieces()})


def extract_inputs(wildcards):
    """The file an extraction job reads, and its index where the file is cut into pieces."""
    inputs = {"dump": f"{DUMP_DIR}/{wildcards.file}", "expanda": "results/expanda"}
    for file, index, _, pieces in dump_pieces():
        if file == wildcards.file and pieces > 1:
            inputs["index"] = f"{DUMP_DIR}/{index}"
    return inputs


def piece_flags(wildcards, input):
    pieces = max(p for f, _, _, p in dump_pieces() if f == wildcards.file)
    index = ["--index", input.index] if "index" in input.keys() else []
    return ["--piece", wildcards.piece, "--pieces", str(pieces), *index]


def arch_flags(wildcards):
    return cli_flags(Architecture, MODELS[wildcards.model])


def eval_hardware_flags():
    """Evaluation runs where training ran: on a GPU when train.gpus asks for one."""
    device = "cuda" if TRAIN["gpus"] > 0 else TRAIN["device"]
    return cli_flags(Hardware, {**TRAIN, "device": device}, skip=("threads",))


# python, or torchrun with one process per GPU (under srun across nodes): shell code made of the
# validated numbers train.gpus and train.nodes and train.gpu_model (letters, digits, _ and . by the
# schema's pattern) only, so rules/train.smk starts its command with it as is.
TRAIN_LAUNCHER = launch_command(TRAIN["gpus"], TRAIN["nodes"], TRAIN["gpu_model"])


def model_params(wildcards):
    """Parameters of {model} at the configured vocabulary and context."""
    arch = MODELS[wildcards.model]
    return param_count(
        arch["layers"],
        arch["dims"],
        config["corpus"]["vocab_size"],
        TRAIN["seq_len"],
        TRAIN["mlp_ratio"],
    )


def train_mem_mb(wildcards):
    """Host memory per node for training {model}: train.mem_mb, or (0) computed from its shape."""
    compiles = TRAIN["compile"] != "off"  # auto compiles on CUDA
    return TRAIN["mem_mb"] or train_memory_mb(
        model_params(wildcards), TRAIN["gpus"], compiles
    )


def baseline_input(wildcards):
    """The folder results/baseline_{baseline}.json scores: a local folder as it is (replacing the model reruns
    its score), a hub id as fetch_baseline downloads it (on the login node)."""
    model = BASELINES[wildcards.baseline]
    return {
        "folder": (
            model if os.path.isdir(model) else f"resources/hf/{wildcards.baseline}"
        )
    }


def hub_id(wildcards):
    return BASELINES[wildcards.baseline]


def baseline_mem_mb(wildcards, input):
    """Host memory for scoring a baseline: its parameters, counted from its weight files' headers."""
    return eval_memory_mb(hf_param_count(input.folder), TRAIN["gpus"] > 0)


def baseline_windows():
    """Our models' windows when scored beside the baselines: baselines.context where our seq_len allows it,
    baselines.stride or half of that context."""
    b = config["baselines"]
    context = min(TRAIN["seq_len"], b["context"] or TRAIN["seq_len"])
    stride = min(context, b["stride"] or max(1, context // 2))
    return [f"--context={context}", f"--stride={stride}"]


def eval_mem_mb(wildcards):
    return TRAIN["mem_mb"] or eval_memory_mb(model_params(wildcards), TRAIN["gpus"] > 0)


# The train job's shape for a scheduler: one node's GPUs, or one task per node (gpt2.launch.job_layout).
TRAIN_RESOURCES = {
    "mem_mb": train_mem_mb,
    "runtime": TRAIN["runtime"],
    **job_layout(TRAIN["gpus"], TRAIN["nodes"], TRAIN["gpu_model"]),
}


def benchmark_files(models):
    # (the per-file jobs' benchmarks are in results/benchmarks/{fetch_part,extract_chunk}/)
    per_bucket = ("gather_bucket", "tokenize_bucket", "shard_bucket")
    buckets = [f"{s}/{b}" for s in per_bucket for b in range(len(BUCKETS))]
    stages = [
        "list_dump",
        "patch_expanda",
        *buckets,
        "train_vocab",
        "gather_corpus",
        "make_shards",
    ]
    stages += [f"{stage}/{m}" for m in models for stage in ("train", "evaluate")]
    return [f"results/benchmarks/{stage}.tsv" for stage in stages]
