"""Every setting of the workflow and of `python -m gpt2`, declared once.

A setting is one dataclass field: its name, type, default, one line of help
and its allowed range. Each config section (`dump:`, `corpus:`, ...) is one
dataclass. Everything else is derived from these declarations:

- `config.yaml`, `schemas/config.schema.yaml` and `docs/settings.md` are rendered
  from them (render.py: `python -m gpt2 write-config --root .`; a test checks the
  committed files),
- the flags of `python -m gpt2 <command>` (cli.py),
- the flags the Snakemake rules pass (`cli_flags`),
- the stage functions take the dataclasses, so no signature repeats a default.

`where` says who sees a field: "both" (config key and flag), "config" (the
workflow or the job scheduler only) or "cli" (a command-line option only).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from gpt2 import UserError

Switch = Literal["auto", "on", "off"]


def param(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
          above: float | None = None, below: float | None = None, pattern: str | None = None,
          aliases: tuple[str, ...] = (), where: str = "both", trajectory: bool = False) -> Any:
    """A dataclass field carrying its help, range and CLI aliases.

    `above`/`below` are exclusive bounds; `trajectory` marks training settings
    that change the run's path, so a checkpoint only resumes a run that agrees.
    """
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "above": above, "below": below,
            "pattern": pattern, "aliases": aliases, "where": where, "trajectory": trajectory}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# --- the config sections -----------------------------------------------------------


@dataclass(frozen=True)
class DumpParams:
    """The Wikipedia dump, as a listing of one or more files that the corpus stage reads.
    sample: the real (shortened) English Wikipedia dump shipped in the gensim
            wheel -- offline, 206 pages, the default (a one-file listing).
    url:    download dump.url (HTTP range resume, retries, checksum check).
    path:   a dump you already have on disk (dump.path).
    wiki:   a whole wiki (dump.wiki, dump.date) as Wikimedia publishes it: the
            pages-articles-multistream files of dump.parts, one fetch job per
            file (profiles/README.md: enwiki on SLURM)."""

    source: Literal["sample", "url", "path", "wiki"] = param(
        "sample", "where the dump comes from: sample, url, path or wiki")
    url: str = param("https://dumps.wikimedia.org/enwiki/20240801/"
                     "enwiki-20240801-pages-articles-multistream1.xml-p1p41242.bz2", "dump URL for source url")
    path: str = param("", "a local .xml.bz2 for source path")
    wiki: str = param("enwiki", "source wiki: the wiki's database name (enwiki, kowiki, simplewiki, ...)",
                      pattern="^[a-z_]+$")
    date: str = param("latest", "source wiki: the dump's date (YYYYMMDD) or latest (the newest finished one, "
                                "resolved once and recorded in the file list)", pattern="^([0-9]{8}|latest)$")
    mirror: str = param("https://dumps.wikimedia.org", "source wiki: the dumps site, or a local folder laid out "
                                                       "like it (<wiki>/<date>/dumpstatus.json, ...)")
    parts: str = param("all", "source wiki: part numbers to use: all, or e.g. 1 / 1-3 / 1,4 (enwiki has 27 "
                              "parts; small wikis publish one file, part 1)",
                       pattern="^(all|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$")
    name: str = param("", "the dump's folder resources/dumps/<name>/ (a one-file source is <name>.xml.bz2 in it); "
                          "empty: from the URL, file name or <wiki>-<date> (enwiki-sample for the sample)",
                      pattern="^[A-Za-z0-9._-]*$")
    sha1: str = param("", "expected sha1; empty with source url: the published <wiki>-<date>-sha1sums.txt "
                          "(source wiki: each file's sha1 from dumpstatus.json)",
                      pattern="^([0-9a-f]{40})?$")
    md5: str = param("", "expected md5", pattern="^([0-9a-f]{32})?$")
    allow_unverified: bool = param(False, "accept a downloaded or mirrored file for which no sha1/md5 is known "
                                          "(dump.sha1/md5, dumpstatus.json or the published sums files); its "
                                          "listed size is still checked, and known sums always are")
    retries: int = param(5, "download attempts after the first, with backoff (connection errors, 429, 5xx)",
                         minimum=0, maximum=100)
    timeout_s: float = param(60.0, "per-request connect/read timeout in seconds", above=0)
    deadline_s: float = param(21600.0, "overall time for one file's download, retries included; past it the "
                                       "job stops and a rerun resumes", above=0)


@dataclass(frozen=True)
class CorpusParams:
    """The corpus expanda builds from the dump."""

    tokenizer: Literal["wordpiece", "bpe"] = param("wordpiece", "wordpiece: expanda's (lowercased, <unk> for the "
                                                          "unseen; results/corpus/vocab.txt); bpe: GPT-2's cased "
                                                          "byte-level BPE, lossless (results/corpus/tokenizer.json)")
    vocab_size: int = param(8000, "vocabulary size incl. special tokens (WordPiece: <unk> <s> </s> <pad>; BPE: "
                                  "<|endoftext|>); at most 65,535, so ids fit the uint16 shards",
                            minimum=300, maximum=65535)
    limit_alphabet: int = param(1000, "most distinct characters WordPiece keeps (BPE keeps all 256 bytes)",
                                minimum=1)
    min_length: int = param(50, "sentences shorter than this (characters) are dropped", minimum=0)
    max_length: int = param(1000, "sentences longer than this (characters) are dropped", minimum=1)
    split_ratio: float = param(0.1, "fraction of articles held out as the test split (whole articles, each "
                                    "keeping its sentences in order)", above=0, below=1)
    valid_ratio: float = param(0.05, "fraction of articles held out as the validation split, which training "
                                     "evaluates on", above=0, below=1)
    split_sent: bool = param(True, "one sentence a line; false: expanda packs an article's consecutive sentences "
                                   "into lines of up to max_length characters")
    subset_size: int = param(1_000_000_000, "bytes of the train articles' head (in shuffled order) that "
                                            "the tokenizer is trained on", minimum=1)
    input_vocab: str = param("", "reuse this vocab.txt (or tokenizer.json with bpe) instead of training one "
                                 "(e.g. to score a model on another dump)")
    max_page_bytes: int = param(16 << 20, "pages whose wikitext is larger are skipped and counted, never held in "
                                          "memory (MediaWiki caps an article at 2 MiB)", minimum=1024)
    list_pages: Literal["keep", "drop"] = param("keep", "pages titled as lists (en 'List of ...', ko '... 목록'): "
                                                        "keep their sentences, or drop the pages (counted "
                                                        "either way in audit.json)")
    seed: int = param(0, "seeds the article order (a hash of seed and page id): the same dump gives the same "
                         "corpus", minimum=0)
    threads: int = param(2, "expanda worker processes per extraction job (capped by --cores)", minimum=1,
                         maximum=256)
    extract_jobs: int = param(1, "extraction jobs to aim for: each file with a multistream index is cut into "
                                 "ceil(extract_jobs / files) pieces at its bz2 streams (a whole wiki: 16 and more)",
                              minimum=1, maximum=4096)
    buckets: int = param(1, "shuffle buckets, one gather, tokenizing and sharding job each; a gather job holds "
                            "~1/buckets of the articles' index (a whole wiki: 16 and more)", minimum=1,
                         maximum=4096)


@dataclass(frozen=True)
class ShardsParams:
    """The uint16 token shards."""

    shard_tokens: int = param(10_000_000, "token ids per .bin file (2 bytes each)", minimum=1024)


@dataclass(frozen=True)
class Architecture:
    """One model architecture; the defaults are GPT-2 small."""

    layers: int = param(12, "transformer blocks", minimum=1)
    heads: int = param(12, "attention heads (must divide dims)", minimum=1)
    dims: int = param(768, "hidden size", minimum=1)


# The architectures under `models:`, picked by the {model} in results/eval_{model}.json.
DEFAULT_MODEL = "small"
MODELS = {
    "tiny": Architecture(layers=2, heads=2, dims=64),
    DEFAULT_MODEL: Architecture(),
    "medium": Architecture(layers=24, heads=16, dims=1024),
    "large": Architecture(layers=36, heads=20, dims=1280),
    "xl": Architecture(layers=48, heads=25, dims=1600),
}


@dataclass(frozen=True)
class Hardware:
    """Where and how the computation runs (training and evaluation)."""

    amp: Switch = param("auto", "bf16 autocast: auto = CUDA and CPUs with native bf16 (AVX512-BF16/AMX); on; off",
                        aliases=("--use_amp=on",), trajectory=True)
    device: Literal["auto", "cpu", "cuda"] = param("auto", "auto (CUDA if torch sees one), cpu or cuda",
                                                   aliases=("--use_gpu=cuda",))
    threads: int = param(2, "CPU threads per process (torch.set_num_threads)", minimum=1, maximum=1024)


@dataclass(frozen=True)
class TrainParams(Hardware):
    """The training budget, shared by every model. The defaults train `small` on a
    2-core CPU within `make run`'s ten minutes; on GPUs raise steps/batch_tokens."""

    seq_len: int = param(128, "context length in tokens", minimum=2, maximum=65536)
    mlp_ratio: int = param(4, "MLP hidden width as a multiple of dims (GPT-2: 4)", minimum=1, aliases=("--rate",))
    dropout: float = param(0.0, "dropout rate", minimum=0, below=1)
    steps: int = param(25, "optimizer steps in total", minimum=1, aliases=("--total_steps",), trajectory=True)
    batch_tokens: int = param(2048, "global batch per optimizer step in tokens, a multiple of micro_batch x seq_len "
                                   "x processes (0: one micro-batch per process)", minimum=0, trajectory=True)
    micro_batch: int = param(4, "sequences per forward pass per process; accumulation fills the batch", minimum=1,
                             aliases=("--batch_train",))
    batch_eval: int = param(16, "sequences per forward pass in the periodic evaluation", minimum=1)
    lr: float = param(0.0015, "peak learning rate of every weight under adamw; under muon of the embeddings, "
                              "norms and biases only (muon_lr moves the blocks' 2-D weights)", above=0, aliases=("--base_lr",), trajectory=True)
    min_lr_ratio: float = param(0.1, "the schedule's decay ends at lr x this (muon_lr x this)", minimum=0,
                                maximum=1, trajectory=True)
    schedule: Literal["cosine", "wsd"] = param("wsd", "after warmup: cosine decay, or wsd (warmup-stable-decay: "
                                                         "the peak lr, then a linear decay over decay_ratio of the "
                                                         "steps)", trajectory=True)
    decay_ratio: float = param(0.3, "wsd: the final fraction of the steps that decays linearly", above=0,
                               maximum=1, trajectory=True)
    optimizer: Literal["adamw", "muon"] = param("muon", "adamw on every parameter (GPT-2), or muon on the blocks' "
                                                         "2-D weights (q, k, v apart) with adamw at lr on the rest",
                                                trajectory=True)
    muon_lr: float = param(0.02, "muon: peak learning rate of the blocks' 2-D weights", above=0, trajectory=True)
    muon_momentum: float = param(0.95, "muon: momentum (Nesterov)", minimum=0, below=1, trajectory=True)
    muon_weight_decay: float = param(0.0, "muon: decoupled weight decay of the blocks' 2-D weights", minimum=0,
                                     trajectory=True)
    warmup_ratio: float = param(0.05, "linear warmup over this fraction of the steps (of an extension's added "
                                      "steps), so it follows the run's length", minimum=0, below=1,
                                trajectory=True)
    init_prior: bool = param(True, "start the untrained model at the train split's unigram distribution instead "
                                   "of uniform (saves the first ~100 steps on small budgets)", trajectory=True)
    weight_decay: float = param(0.1, "adamw: weight decay of the blocks' 2-D weights (norms, biases and "
                                     "embeddings are not decayed); no effect under muon (muon_weight_decay)", minimum=0, aliases=("--wd_rate",),
                                trajectory=True)
    beta1: float = param(0.9, "AdamW beta1", minimum=0, below=1, trajectory=True)
    beta2: float = param(0.95, "AdamW beta2", minimum=0, below=1, trajectory=True)
    grad_clip: float = param(1.0, "clip the global gradient norm to this", above=0, trajectory=True)
    seed: int = param(1337, "seed of initialisation, data order and dropout", minimum=0, trajectory=True)
    eval_every: int = param(100, "held-out evaluation every N steps ...", minimum=1, aliases=("--eval_steps",))
    eval_tokens: int = param(4096, "... on this many tokens from the start of the validation split (the lowest "
                                   "loss is kept as best.pt)", minimum=2)
    max_epochs: float = param(4.0, "warn when the run reads the train split more often than this", minimum=0)
    log_every: int = param(10, "a metrics.csv row every N steps", minimum=1)
    checkpoint_every: int = param(100, "checkpoint every N steps", minimum=1, aliases=("--save_steps",))
    keep_checkpoints: int = param(2, "newest checkpoints kept", minimum=1)
    loader_threads: int = param(1, "threads that read the coming steps' batches from the shards (more on network "
                                   "file systems: metrics.csv's data_wait says when the loop waits for them)",
                                minimum=1, maximum=64)
    compile: Switch = param("auto", "torch.compile: auto = on for CUDA, off on CPU")
    grad_ckpt: bool = param(False, "activation checkpointing (saves memory, costs ~30% time)",
                            aliases=("--use_grad_ckpt=true",))
    gpus: int = param(0, "GPUs per node; > 1 launches torchrun DDP with one process per GPU", minimum=0,
                      maximum=1024)
    nodes: int = param(1, "> 1 (SLURM): one task per node, each a torchrun of `gpus` processes, rendezvous on "
                          "the first node", minimum=1,
                       maximum=4096, where="config")
    gpu_model: str = param("", "SLURM: the GPU type the cluster names (h100, a100, ...), asked for with the GPU "
                               "count (gpu:h100:4 per node across nodes); empty: any GPU", pattern="^[A-Za-z0-9_.]*$",
                           where="config")
    mem_mb: int = param(0, "host memory per node for schedulers (SLURM), MB; 0: computed from the model's shape "
                           "and the GPUs per node (docs/training.md, Memory)", minimum=0, where="config")
    runtime: int = param(60, "minutes per job for schedulers (SLURM)", minimum=1, where="config")


@dataclass(frozen=True)
class EvaluateParams:
    """The final test-set evaluation."""

    checkpoint: Literal["final", "best"] = param("final", "the model the test split scores: final (model.pt) or "
                                                          "best (best.pt, the lowest validation loss)",
                                                 where="config")
    batch_eval: int = param(16, "sequences per forward pass (train.batch_eval is its periodic evaluation's)",
                            minimum=1, aliases=("--batch_size",))
    max_batches: int = param(0, "score only the first N batches (0 or less: the whole test split)",
                             aliases=("--total_steps",), where="cli")


@dataclass(frozen=True)
class BaselineParams:
    """Other causal LMs (transformers) scored on the same test articles, by bits per byte."""

    models: list[str] = param([], "Hugging Face hub ids (gpt2, gpt2-medium; a hub id needs the network or a filled "
                                  "HF cache) or local folders; each gives results/baseline_{name}.json, its name "
                                  "the id's last part", where="config")
    context: int = param(0, "tokens a scoring window holds, at most the model's context (0: the model's context)",
                         minimum=0)
    stride: int = param(0, "tokens between the starts of two scoring windows; each scored token sees at least "
                           "context - stride tokens before it (0: half the context with --hf and for baselines, and "
                           "disjoint windows for a model.pt, as results/eval_{model}.json is defined)", minimum=0)


@dataclass(frozen=True)
class ReportParams:
    """What `make report` puts in the Snakemake HTML report."""

    models: list[str] = param([DEFAULT_MODEL], "models shown (their eval JSONs are built if missing)",
                              where="config")
    prompts: list[str] = param(["The history of", "In mathematics,", "The city is located"],
                               "fixed prompts for the seeded text samples")
    sample_tokens: int = param(40, "new tokens per sample", minimum=1, maximum=1024)
    seed: int = param(0, "seed of the first sample (the i-th prompt uses seed + i)", minimum=0)


@dataclass(frozen=True)
class DownstreamParams:
    """Downstream tasks (results/tasks/) and their lm-evaluation-harness run on a model's export."""

    items: int = param(200, "items per task at most, when building them and when scoring (a CPU run stays "
                            "short: the tiny model on the sample in under a minute)", minimum=1)
    extra_tasks: list[str] = param([], "lm-eval task names scored beside ours, e.g. [hellaswag, lambada_openai] "
                                       "(they need the network or a Hugging Face datasets cache)")
    batch: int = param(16, "lm-eval batch size", minimum=1)


@dataclass(frozen=True)
class SampleParams:
    """Sampling for `python -m gpt2 generate` (command line only)."""

    max_tokens: int = param(64, "new tokens at most", minimum=1, where="cli")
    temperature: float = param(1.0, "0 = greedy", minimum=0, where="cli")
    top_k: int = param(0, "sample among the k likeliest tokens (0: off)", minimum=0, where="cli")
    top_p: float = param(0.85, "nucleus sampling: the smallest set of tokens reaching this probability",
                         above=0, maximum=1, aliases=("--nucleus_prob",), where="cli")
    seed: int = param(0, "sampling seed (the i-th prompt uses seed + i)", minimum=0, where="cli")


SECTIONS: dict[str, type] = {"dump": DumpParams, "corpus": CorpusParams, "shards": ShardsParams,
                             "train": TrainParams, "evaluate": EvaluateParams, "baselines": BaselineParams,
                             "report": ReportParams,
                             "downstream": DownstreamParams}

# The reference GPT-2 repo's defaults, applied only with `--reference_defaults`.
# batch_tokens 0: the reference has no gradient accumulation; its recipe is AdamW with a cosine decay.
REFERENCE_DEFAULTS = {"seq_len": 64, "layers": 12, "heads": 16, "dims": 1024, "dropout": 0.1, "micro_batch": 64,
                      "batch_tokens": 0, "batch_eval": 64, "lr": 1e-4, "weight_decay": 1e-2, "steps": 1_000_000,
                      "eval_every": 500, "checkpoint_every": 1000, "init_prior": False,
                      "optimizer": "adamw", "schedule": "cosine"}


# --- reading the declarations ----------------------------------------------------


def settings(cls: type, where: tuple[str, ...] = ("both", "config", "cli")) -> list[dataclasses.Field]:
    """The fields of a params class seen from `where`, with their resolved types in `.type`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata["where"] in where:
            f.type = hints[f.name]
            out.append(f)
    return out


def default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def choices(kind: Any) -> tuple | None:
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def from_values(cls: type, values: dict) -> Any:
    """An instance from a dict (a config section or parsed flags); keys it lacks keep their defaults."""
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def cli_flags(cls: type, values: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """The words `--name=value` (a list: `--name` and its items) for every field a command takes (but
    `skip`): what a rule passes, quoted by the rule's `{params.flags:q}`, word by word."""
    out = []
    for f in settings(cls, ("both",)):
        if f.name in skip:
            continue
        value = values[f.name]
        if value == []:
            continue  # an empty list is the flag's default (nargs="+" takes no empty list)
        words = ["true" if v is True else "false" if v is False else str(v)
                 for v in (value if isinstance(value, list) else [value])]
        out += [f"--{f.name}", *words] if isinstance(value, list) else [f"--{f.name}={words[0]}"]
    return out


def accumulation(params: TrainParams, processes: int) -> int:
    """Micro-batches per process per optimizer step: batch_tokens must be whole passes of all processes."""
    per_pass = params.micro_batch * params.seq_len * processes
    if params.batch_tokens == 0:
        return 1
    if params.batch_tokens % per_pass:
        raise UserError(f"train.batch_tokens = {params.batch_tokens} is not a multiple of micro_batch x seq_len x "
                        f"processes = {params.micro_batch} x {params.seq_len} x {processes} = {per_pass}")
    return params.batch_tokens // per_pass


def check_ranges(instance: Any) -> None:
    """The declared ranges, for values that come from flags (config values meet them through the schema)."""
    bounds = {"minimum": (">=", lambda v, b: v >= b), "maximum": ("<=", lambda v, b: v <= b),
              "above": (">", lambda v, b: v > b), "below": ("<", lambda v, b: v < b)}
    for f in settings(type(instance), ("both", "cli")):
        value = getattr(instance, f.name)
        aliases = [a for a in f.metadata["aliases"] if "=" not in a]
        flag = f"--{f.name}" + (f" ({', '.join(aliases)})" if aliases else "")
        for key, (sign, ok) in bounds.items():
            if f.metadata[key] is not None and not ok(value, f.metadata[key]):
                raise UserError(f"{flag} {value} is out of range (must be {sign} {f.metadata[key]})")
        if f.metadata["pattern"] and not re.fullmatch(f.metadata["pattern"], value):
            raise UserError(f"{flag} {value!r} does not match {f.metadata['pattern']}")


def trajectory_keys(cls: type = TrainParams) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["trajectory"])


# --- the JSON schema (config.yaml and docs/settings.md are rendered in render.py) ---------------------------------------------


def _json_type(kind: Any) -> dict:
    if choices(kind):
        return {"enum": list(choices(kind))}
    if typing.get_origin(kind) is list:
        return {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
    return {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[kind]}


def field_schema(f: dataclasses.Field) -> dict:
    """JSON Schema of one field: type, range, pattern, default."""
    schema = _json_type(f.type)
    if choices(f.type) == typing.get_args(Switch):
        schema["enum"] += [True, False]  # YAML reads a bare on/off as a boolean
    names = {"minimum": "minimum", "maximum": "maximum", "above": "exclusiveMinimum", "below": "exclusiveMaximum",
             "pattern": "pattern"}
    schema.update({names[k]: f.metadata[k] for k in names if f.metadata[k] is not None})
    schema["default"] = default(f)
    if schema["default"] == []:  # a list that may be empty (downstream.extra_tasks: none by default)
        schema.pop("minItems")
    schema["description"] = f.metadata["help"]
    return schema


def section_schema(cls: type) -> dict:
    props = {f.name: field_schema(f) for f in settings(cls, ("both", "config"))}
    return {"type": "object", "additionalProperties": False, "default": {}, "properties": props}


def config_schema() -> dict:
    """The JSON Schema config.yaml is validated against."""
    arch = section_schema(Architecture)
    arch.pop("default")
    arch["required"] = list(arch["properties"])
    for prop in arch["properties"].values():
        prop.pop("default")
    models = {"type": "object", "description": "name -> architecture; the name is the {model} wildcard.",
              "default": {name: dataclasses.asdict(a) for name, a in MODELS.items()},
              "propertyNames": {"pattern": "^[A-Za-z0-9_-]+$"}, "additionalProperties": arch}
    props = {name: section_schema(cls) for name, cls in SECTIONS.items()}
    first = ("dump", "corpus", "shards")  # then models, then the sections that use them
    props = {**{k: props[k] for k in first}, "models": models, **{k: v for k, v in props.items() if k not in first}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "Configuration of the GPT-2-on-Wikipedia workflow, rendered from src/gpt2/params.py.",
            "type": "object", "additionalProperties": False, "properties": props}
