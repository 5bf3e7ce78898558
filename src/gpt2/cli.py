"""`python -m gpt2 <command>`: one parser and a table of command -> stage function.

The Snakemake rules and users share it. A command's setting flags come from
the dataclasses of params.py (one flag per field, named as the config key,
plus the reference repo's aliases); its files are the `Arg`s below. A stage
function receives each file argument by name and each params dataclass as
one argument, matched by its type annotation. Bad input surfaces as a single
`error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import inspect
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gpt2 import UserError
from gpt2.params import (REFERENCE_DEFAULTS, Architecture, BaselineParams, CorpusParams, DownstreamParams, DumpParams,
                         EvaluateParams, Hardware,
                         ReportParams, SampleParams, ShardsParams, Switch, TrainParams, check_ranges, choices,
                         default, settings)


def boolean(text: str) -> bool:
    """true/false (also yes/no, on/off, 1/0)."""
    value = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def switch(text: str) -> str:
    """auto / on / off (true/false and yes/no too, as YAML writes them)."""
    if text.lower() == "auto":
        return "auto"
    try:
        return "on" if boolean(text) else "off"
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}") from None


def existing(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return path


@dataclass(frozen=True)
class Arg:
    """A file, or a value that is not a setting, that a command takes."""

    dest: str
    help: str
    type: Callable | None = Path
    required: bool = False
    default: Any = None
    group: str | None = None  # exactly one argument of a group is required
    positional: bool = False
    options: dict = field(default_factory=dict)  # more add_argument keywords (nargs, action, choices)

    def add_to(self, parser) -> None:
        kwargs = {"help": self.help, "default": self.default, **self.options}
        if self.type is not None:
            kwargs["type"] = self.type
        if self.positional:
            parser.add_argument(self.dest, **kwargs)
        else:
            parser.add_argument(f"--{self.dest}", required=self.required, **kwargs)


def _file(dest: str, help: str, required: bool = False, **kw) -> Arg:
    return Arg(dest, help, existing, required, **kw)


# The reference repo's ways to name a corpus: a shards manifest, or expanda's text files.
SHARDS = _file("shards", "a shards manifest.json (its train and test splits)", group="data")
EVAL_CORPUS = _file("eval_corpus", "expanda's corpus.test.txt (or a shards manifest.json)", group="data")
TRAIN_CORPUS = _file("train_corpus", "expanda's corpus.train.txt")
VOCAB = _file("vocab_path", "the corpus's vocab.txt or tokenizer.json (needed with text corpora)")
MODEL = _file("model_path", "model.pt written by train", required=True)
NEEDS_VOCAB = _file("vocab_path", "the corpus's vocab.txt (WordPiece) or tokenizer.json (BPE)", required=True)
CORPUS_SPLITS = (_file("train_corpus", "expanda's corpus.train.txt", required=True),
                 _file("valid_corpus", "expanda's corpus.valid.txt", required=True),
                 _file("test_corpus", "expanda's corpus.test.txt", required=True))
# Whole wikis: the stages' folders, passed between the scatter and gather jobs.
LISTING = _file("listing", "the file list of list-dump", required=True)
EXPANDA = _file("expanda", "the patched expanda folder", required=True)
EXTRACTED = _file("extracted", "extract-chunk folders, in file and piece order", required=True, options={"nargs": "+"})
BUCKETS = _file("bucket_dirs", "gather-bucket folders, in bucket order", required=True, options={"nargs": "+"})


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"; imported when the command runs, so torch loads only where needed
    help: str
    args: tuple[Arg, ...] = ()
    params: tuple[type, ...] = ()
    checks_architecture: bool = False  # --layers/--dims/... name what the checkpoint must be


COMMANDS = {
    "fetch-dump": Command("gpt2.dump:fetch_dump", "put a verified Wikipedia dump in place", (
        Arg("out", "destination .xml.bz2 (a .json sidecar goes beside)", required=True),), (DumpParams,)),
    "patch-expanda": Command("gpt2.patched_expanda:patch_expanda", "copy the installed expanda and apply patches/", (
        Arg("out", "folder for the patched copy", required=True),
        _file("patches", "the *.patch files, applied in name order", required=True, options={"nargs": "+"}))),
    "list-dump": Command("gpt2.dump:list_dump", "list the dump's files: the one file of the sample, a URL or a "
                         "path, or a whole wiki's from dumpstatus.json (dump.date resolved, dump.parts)", (Arg("out", "the file list (JSON)", required=True),), (DumpParams,)),
    "fetch-part": Command("gpt2.dump:fetch_part", "fetch one listed file, resumable and verified", (
        LISTING, Arg("file", "the file's name in the listing", str, required=True),
        Arg("out", "where the file goes", required=True)), (DumpParams,)),
    "extract-chunk": Command("gpt2.corpus:extract_chunk", "expanda's extraction of one piece of a dump "
                             "file, its articles scattered over corpus.buckets buckets", (
        _file("dump", "a pages-articles .xml.bz2 file", required=True),
        _file("index", "its multistream index (needed for --pieces > 1)"),
        Arg("piece", "which piece, from 0", int, required=True),
        Arg("pieces", "pieces the file is cut into at its bz2 streams", int, required=True),
        EXPANDA, Arg("out", "folder for the bucket files, stats.json and audit.json", required=True)), (CorpusParams,)),
    "gather-bucket": Command("gpt2.corpus:gather_bucket", "one bucket of every piece, in hash order, "
                             "with each article's split", (
        EXTRACTED, Arg("bucket", "which bucket, from 0", int, required=True),
        Arg("out", "folder for raw.txt and articles.tsv", required=True)), (CorpusParams,)),
    "train-vocab": Command("gpt2.corpus:train_vocab", "the tokenizer (WordPiece or BPE) on the head of the train "
                          "articles", (
        BUCKETS, EXPANDA, Arg("out", "vocab.txt or tokenizer.json to write", required=True)), (CorpusParams,)),
    "tokenize-bucket": Command("gpt2.corpus:tokenize_bucket", "tokenize one bucket", (
        _file("bucket", "a gather-bucket folder", required=True),
        _file("vocab", "vocab.txt or tokenizer.json", required=True),
        EXPANDA, Arg("out", "token lines to write", required=True))),
    "gather-corpus": Command("gpt2.corpus:gather_corpus", "the buckets into the corpus files", (
        LISTING, EXTRACTED, BUCKETS,
        _file("tokens", "tokenize-bucket outputs, in bucket order", required=True, options={"nargs": "+"}),
        Arg("out", "folder for corpus.*.txt, corpus.articles.tsv and audit.json", required=True),
        Arg("info", "the dump's JSON sidecar to write", required=True))),
    "make-shards": Command("gpt2.shards:make_shards", "token lines -> uint16 shards + manifest.json", (
        NEEDS_VOCAB, *CORPUS_SPLITS,
        _file("raw_corpus", "expanda's corpus.raw.txt: byte counts and the test split's raw text"),
        _file("articles", "corpus.articles.tsv: each article one document (without it, each line)"),
        Arg("out", "folder for train/, test/ and manifest.json", required=True)), (ShardsParams,)),
    "shard-bucket": Command("gpt2.shards:shard_bucket", "one bucket's token lines -> uint16 shards", (
        _file("bucket", "a gather-bucket folder", required=True),
        _file("tokens", "its tokenize-bucket lines", required=True), NEEDS_VOCAB,
        Arg("out", "folder for the bucket's shards and splits.json", required=True)), (ShardsParams,)),
    "gather-shards": Command("gpt2.shards:gather_shards", "the buckets' shards -> one shards folder "
                             "+ manifest.json", (
        _file("bucket_dirs", "shard-bucket folders, in bucket order", required=True, options={"nargs": "+"}),
        NEEDS_VOCAB, *CORPUS_SPLITS, Arg("out", "folder for train/, valid/, test/ and manifest.json",
                                         required=True)), (ShardsParams,)),
    "train": Command("gpt2.train:train_command", "train (or resume) a GPT-2; re-running the same command resumes "
                     "from the newest checkpoint", (
        SHARDS, EVAL_CORPUS, TRAIN_CORPUS, VOCAB,
        Arg("save_model_path", "final model; metrics.csv is written beside it", default=Path("model.pt")),
        Arg("save_checkpoint_path", "checkpoint folder (default: checkpoints/ beside the model)"),
        _file("from_checkpoint", "resume from this checkpoint file"),
        _file("from_pretrained", "start a new run from the weights of this model.pt")),
        (Architecture, TrainParams)),
    "evaluate": Command("gpt2.evaluate:evaluate_command", "test loss, perplexity, bits per byte and the unigram "
                        "baseline as JSON", (
        _file("model_path", "model.pt written by train", group="model"),
        Arg("hf", "instead of a model.pt: a transformers causal LM, a hub id (gpt2, gpt2-medium) or a local "
                  "folder, scored with its own tokenizer on the test split's text (--shards or --text)", str,
            group="model"),
        SHARDS, EVAL_CORPUS,
        _file("text", "raw UTF-8 text to score (with --vocab_path): each line tokenized as expanda does, a blank "
                      "line between documents", group="data"),
        _file("train_corpus", "with a text eval corpus: expanda's corpus.train.txt, for the unigram baseline"),
        VOCAB, Arg("output", "also write the JSON report here"),
        Arg("name", "model name in the report (default: the model's folder)", str, default="")),
        (EvaluateParams, BaselineParams, Hardware), checks_architecture=True),
    "fetch-hf": Command("gpt2.evaluate:fetch_hf", "a hub model (weights, config, tokenizer) into a folder, for "
                        "evaluate --hf where there is no network (a cluster's compute nodes)", (
        Arg("hf", "the hub id, e.g. gpt2 or openai-community/gpt2-medium", str, required=True),
        Arg("out", "the folder to write", required=True))),
    "generate": Command("gpt2.generate:generate_command", "complete prompts (interactive without --prompt)", (
        MODEL, NEEDS_VOCAB,
        Arg("prompt", "a prompt (repeat for several); none: read prompts from stdin", str,
            options={"action": "append"})), (SampleParams, Hardware), checks_architecture=True),
    "visualize": Command("gpt2.report:visualize", "the four-panel loss figure of a training run", (
        _file("model_path", "model.pt (or its folder): metrics.csv beside it is plotted", required=True),
        Arg("figure", "output image", default=Path("figure.png")),
        Arg("interactive", "also show the figure in a window", None, default=False,
            options={"action": "store_true"}))),
    "export": Command("gpt2.export:export_hf", "a Hugging Face transformers directory (GPT2LMHeadModel + "
                      "tokenizer + a model card README.md)", (
        MODEL, NEEDS_VOCAB, Arg("out", "output directory", required=True),
        _file("evaluation", "the model's eval JSON, for the card's results"),
        _file("dump_info", "the dump's JSON sidecar (resources/dumps/), for the card's data section"))),
    "build-tasks": Command("gpt2.downstream:build_tasks", "downstream tasks (JSONL + lm-eval YAML) from the test "
                           "split's articles", (
        _file("articles", "corpus.articles.tsv", required=True),
        _file("raw", "corpus.raw.txt", required=True), Arg("out", "folder for the tasks", required=True),
        Arg("seed", "corpus.seed: every choice is a hash of it and the page id", int, default=0)),
        (DownstreamParams,)),
    "downstream": Command("gpt2.downstream:score", "lm-evaluation-harness on an export: the tasks, any "
                          "--extra_tasks, and the unigram baseline on the same items, as JSON", (
        _file("model_dir", "the model's export (python -m gpt2 export)", required=True),
        _file("tasks", "build-tasks' folder", required=True),
        _file("shards", "manifest.json of the shards the model was trained on (the unigram baseline)", required=True),
        Arg("out", "the JSON report", required=True), Arg("model", "model name in the report", str, default="")),
        (DownstreamParams,)),
    "plot-training": Command("gpt2.report:plot_training", "loss (four views), learning-rate and throughput figures", (
        _file("metrics", "metrics.csv written by train", required=True),
        Arg("loss", "output figure: loss in four views", required=True),
        Arg("lr", "output figure: learning rate", required=True),
        Arg("speed", "output figure: tokens per second", required=True),
        Arg("model", "name in the titles", str, default="model"))),
    "samples": Command("gpt2.report:write_samples", "seeded completions of the report's prompts", (
        MODEL, NEEDS_VOCAB, Arg("output", "the samples file", required=True)), (ReportParams,)),
    "table": Command("gpt2.report:write_table", "a CSV + HTML table for the report", (
        Arg("kind", "evaluation, corpus, audit, downstream, baselines or runtime", str, positional=True,
            options={"choices": ["evaluation", "corpus", "audit", "downstream", "baselines", "runtime"]}),
        _file("inputs", "evaluation: eval JSONs; corpus: manifest.json and the dump's .json; audit: the corpus "
                        "audit.json; downstream: downstream JSONs; baselines: eval and baseline JSONs; runtime: "
                        "benchmark TSVs", required=True,
              options={"nargs": "+"}),
        Arg("csv", "output CSV", required=True), Arg("html", "output HTML", required=True))),
    "screenshot": Command("gpt2.report:screenshot_report", "PNG of the HTML report with the loss curves open "
                          "(needs chromium)", (
        _file("report", "the HTML report", default=Path("results/report.html")),
        Arg("out", "output PNG", required=True),
        Arg("chromium", "the Chromium binary Playwright drives", str, default="/usr/bin/chromium"))),
    "write-config": Command("gpt2.render:write_config", "render config.yaml, schemas/config.schema.yaml and "
                            "docs/settings.md from src/gpt2/params.py", (
        _file("root", "the repository to write into (its config.yaml, schemas/ and docs/)", required=True),
        Arg("check", "only check that the files are up to date", None, default=False,
            options={"action": "store_true"}))),
}

# The dims evaluate/generate may name; the checkpoint's own are used, and must match.
CHECKED = ("seq_len", "layers", "heads", "dims", "mlp_ratio")


# --- building the parser -----------------------------------------------------------


def _converter(kind: Any) -> dict:
    if kind is bool:
        return {"type": boolean}
    if kind == Switch:
        return {"type": switch}
    if choices(kind):
        return {"choices": list(choices(kind))}
    if typing.get_origin(kind) is list:
        return {"nargs": "+"}
    return {"type": kind}


def _add_settings(parser, cls: type, defaults: dict) -> None:
    """One flag per field of `cls`, with its aliases; `--name=value` aliases are switches that set a value."""
    for f in settings(cls, ("both", "cli")):
        value = defaults.get(f.name, default(f))
        reference = f"; reference {REFERENCE_DEFAULTS[f.name]}" if f.name in REFERENCE_DEFAULTS else ""
        same = [a for a in f.metadata["aliases"] if "=" not in a]
        parser.add_argument(f"--{f.name}", *same, dest=f.name, default=value,
                            help=f"{f.metadata['help']} (default {value}{reference})".replace("%", "%%"),
                            **_converter(f.type))
        for alias in (a for a in f.metadata["aliases"] if "=" in a):
            flag, const = alias.split("=")
            convert = _converter(f.type).get("type", str)
            parser.add_argument(flag, dest=f.name, action="store_const", const=convert(const),
                                help=f"same as --{f.name} {const}")


def _add_checked(parser) -> None:
    kinds = {f.name: f for cls in (Architecture, TrainParams) for f in settings(cls) if f.name in CHECKED}
    for name in CHECKED:
        aliases = [a for a in kinds[name].metadata["aliases"] if "=" not in a]
        parser.add_argument(f"--{name}", *aliases, dest=name, type=int, default=None,
                            help=f"{kinds[name].metadata['help']}; checked against the checkpoint")


def build_parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """The whole command line; `defaults` (e.g. REFERENCE_DEFAULTS) replace the declared defaults."""
    parser = argparse.ArgumentParser(prog="python -m gpt2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        groups = {}
        for arg in command.args:
            if arg.group and arg.group not in groups:
                groups[arg.group] = p.add_mutually_exclusive_group(required=True)
            arg.add_to(groups.get(arg.group, p))
        for cls in command.params:
            _add_settings(p, cls, defaults or {})
        if command.checks_architecture:
            _add_checked(p)
        if any(f.name in REFERENCE_DEFAULTS for cls in command.params for f in settings(cls)):
            p.add_argument("--reference_defaults", action="store_true",
                           help="take the reference GPT-2 repo's defaults (its --seq_len 64 --heads 16 --dims 1024 "
                                "--batch_train 64 --base_lr 1e-4 --total_steps 1000000 ...) for flags not given")
    return parser


# --- calling the stage function ------------------------------------------------------------


def settings_from(cls: type, args: argparse.Namespace) -> Any:
    """The params dataclass `cls` from parsed flags, its declared ranges checked."""
    instance = cls(**{f.name: getattr(args, f.name) for f in settings(cls, ("both", "cli"))})
    check_ranges(instance)
    return instance


def call(command: Command, args: argparse.Namespace) -> None:
    module, name = command.target.split(":")
    func = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(func)
    kwargs = {}
    for pname in inspect.signature(func).parameters:
        if hints.get(pname) in command.params:
            kwargs[pname] = settings_from(hints[pname], args)
        elif pname == "expect":
            kwargs[pname] = {n: getattr(args, n) for n in CHECKED}
        else:
            kwargs[pname] = getattr(args, pname)
    func(**kwargs)


FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "reference_defaults", False):
        args = build_parser(REFERENCE_DEFAULTS).parse_args(argv)
    try:
        call(COMMANDS[args.command], args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in FULL_DISK:
            raise
        # Writers go through temp files, so nothing truncated is left under the real name.
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: no space left{where} ({exc.strerror}); free space and run again", file=sys.stderr)
        return 2
    return 0
