# Shared helpers: config validation, tool paths, and the values rules pass as params.

import glob
import os
import shlex
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from gpt2 import UserError
from gpt2.config import check_config
from gpt2.dump import dump_name

try:
    check_config(config, os.path.join(workflow.basedir, "schemas", "config.schema.yaml"))
except UserError as exc:
    sys.exit(f"error: {exc}")

# Jobs run `python -m gpt2`: take the interpreter Snakemake runs under (the
# project's .venv) and this checkout's sources, also inside conda envs.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [os.path.join(workflow.basedir, "src"), os.environ.get("PYTHONPATH", "")] if p
)


def flags(**values):
    """--key value pairs for `python -m gpt2`, shell-quoted; empty strings are left out."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        if value not in ("", None):
            out += ["--" + key, shlex.quote(str(value))]
    return " ".join(out)


DUMP_CFG = config["dump"]
DUMP = "resources/dumps/{}.xml.bz2".format(
    dump_name(DUMP_CFG["source"], DUMP_CFG["url"], DUMP_CFG["path"], DUMP_CFG["name"])
)
DUMP_INFO = DUMP.removesuffix(".xml.bz2") + ".json"


def dump_flags():
    d = DUMP_CFG
    return flags(source=d["source"], url=d["url"] if d["source"] == "url" else "",
                 path=d["path"] if d["source"] == "path" else "", sha1=d["sha1"], md5=d["md5"],
                 verify=d["verify"], retries=d["retries"], timeout=d["timeout_s"])


def corpus_flags():
    c = config["corpus"]
    return flags(vocab_size=c["vocab_size"], limit_alphabet=c["limit_alphabet"], min_length=c["min_length"],
                 max_length=c["max_length"], split_ratio=c["split_ratio"], seed=c["seed"])


MODELS = config["models"]
TRAIN_CFG = config["train"]
# Keys of `train:` that go to `python -m gpt2 train` as they are; the rest
# shape the model (arch_flags) or the job (launcher, threads, resources).
TRAIN_ONLY = ("device", "threads", "gpus", "nodes", "mem_mb", "runtime", "seq_len", "rate", "dropout")

wildcard_constraints:
    model="|".join(sorted(MODELS)),


def train_device():
    return "cuda" if TRAIN_CFG["gpus"] > 0 else TRAIN_CFG["device"]


def train_launcher():
    """python, or torchrun with one process per GPU (under srun across nodes)."""
    from gpt2.launch import launch_command

    return launch_command(TRAIN_CFG["gpus"], TRAIN_CFG["nodes"])


def arch_flags(wildcards):
    arch = MODELS[wildcards.model]
    return flags(layers=arch["layers"], heads=arch["heads"], dims=arch["dims"], seq_len=TRAIN_CFG["seq_len"],
                 rate=TRAIN_CFG["rate"], dropout=TRAIN_CFG["dropout"])


def train_flags():
    return flags(device=train_device(), **{k: v for k, v in TRAIN_CFG.items() if k not in TRAIN_ONLY})


def sample_prompt_flags():
    return " ".join("--prompt " + shlex.quote(p) for p in config["report"]["prompts"])


def benchmark_files(models):
    stages = ["fetch_dump", "patch_expanda", "build_corpus", "make_shards"]
    stages += [f"{stage}/{m}" for m in models for stage in ("train", "evaluate")]
    return [f"results/benchmarks/{stage}.tsv" for stage in stages]
