"""`python -m gpt2 <command>`: one entry point for the Snakemake rules and for users.

Each command parses flags and calls the stage module; bad input surfaces as a
single `error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from gpt2 import UserError
from gpt2.commands import add_model_commands, boolean, existing


def _fetch_dump(args: argparse.Namespace) -> None:
    from gpt2.dump import fetch_dump

    fetch_dump(args.source, args.out, url=args.url, path=args.path, sha1=args.sha1, md5=args.md5,
               verify_sums=args.verify, retries=args.retries, timeout=args.timeout)


def _patch_expanda(args: argparse.Namespace) -> None:
    from gpt2.corpus import patch_expanda

    patch_expanda(args.out, args.patches)


def _build_corpus(args: argparse.Namespace) -> None:
    from gpt2.corpus import build_corpus

    build_corpus(args.dump, args.expanda, args.out, threads=args.threads, vocab_size=args.vocab_size,
                 limit_alphabet=args.limit_alphabet, min_length=args.min_length, max_length=args.max_length,
                 split_ratio=args.split_ratio, seed=args.seed)


def _make_shards(args: argparse.Namespace) -> None:
    from gpt2.shards import make_shards

    make_shards(args.vocab_path, args.train_corpus, args.test_corpus, args.out, args.shard_tokens)


def _plot_training(args: argparse.Namespace) -> None:
    from gpt2.report import plot_training

    plot_training(args.metrics, args.loss, args.lr, args.speed, args.model)


def _samples(args: argparse.Namespace) -> None:
    from gpt2.report import write_samples

    for text in write_samples(args.model_path, args.vocab_path, args.prompt, args.output, args.max_tokens, args.seed):
        print(text, file=sys.stderr)


def _table(args: argparse.Namespace) -> None:
    from gpt2 import report

    if args.kind == "evaluation":
        report.eval_table(args.inputs, args.csv, args.html)
    elif args.kind == "corpus":
        if len(args.inputs) != 2:
            raise UserError("table corpus takes --inputs MANIFEST DUMP_INFO")
        report.corpus_table(*args.inputs, args.csv, args.html)
    else:
        report.runtime_table(args.inputs, args.csv, args.html)


def _screenshot(args: argparse.Namespace) -> None:
    from gpt2.report import screenshot_report

    screenshot_report(args.report, args.out, chromium=args.chromium)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot-training", help="loss (four views), learning-rate and throughput figures")
    p.add_argument("--metrics", type=existing, required=True, help="metrics.csv written by train")
    p.add_argument("--loss", type=Path, required=True, help="output figure: loss in four views")
    p.add_argument("--lr", type=Path, required=True, help="output figure: learning rate")
    p.add_argument("--speed", type=Path, required=True, help="output figure: tokens per second")
    p.add_argument("--model", default="model", help="name in the titles")
    p.set_defaults(func=_plot_training)

    p = sub.add_parser("samples", help="seeded completions of fixed prompts")
    p.add_argument("--model_path", type=existing, required=True)
    p.add_argument("--vocab_path", type=existing, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    p.add_argument("--max_tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_samples)

    p = sub.add_parser("table", help="a CSV + HTML table for the report")
    p.add_argument("kind", choices=["evaluation", "corpus", "runtime"])
    p.add_argument("--inputs", type=existing, nargs="+", required=True,
                   help="evaluation: eval JSONs; corpus: manifest.json and the dump's .json; runtime: benchmark TSVs")
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--html", type=Path, required=True)
    p.set_defaults(func=_table)

    p = sub.add_parser("screenshot", help="PNG of the HTML report with the loss curves open (needs chromium)")
    p.add_argument("--report", type=existing, default=Path("results/report.html"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary Playwright drives")
    p.set_defaults(func=_screenshot)


def _add_dump(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-dump", help="put a verified Wikipedia dump in place")
    p.add_argument("--source", choices=["sample", "url", "path"], default="sample",
                   help="sample: enwiki sample in the gensim wheel; url: download; path: a local file")
    p.add_argument("--out", type=Path, required=True, help="destination .xml.bz2 (a .json sidecar goes beside)")
    p.add_argument("--url", default="", help="dump URL for --source url")
    p.add_argument("--path", default="", help="local .xml.bz2 for --source path")
    p.add_argument("--sha1", default="", help="expected sha1 (default for url: the published sha1sums)")
    p.add_argument("--md5", default="", help="expected md5")
    p.add_argument("--verify", type=boolean, default=True, help="check checksums (false skips)")
    p.add_argument("--retries", type=int, default=5, help="download retries after the first attempt")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.set_defaults(func=_fetch_dump)


def _add_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch-expanda", help="copy the installed expanda and apply patches/")
    p.add_argument("--out", type=Path, required=True, help="folder for the patched copy")
    p.add_argument("--patches", type=existing, default=Path("patches"), help="folder of *.patch files")
    p.set_defaults(func=_patch_expanda)

    p = sub.add_parser("build-corpus", help="run the patched expanda on a dump")
    p.add_argument("--dump", type=existing, required=True, help="the .xml.bz2 dump")
    p.add_argument("--expanda", type=existing, required=True, help="the patched expanda folder")
    p.add_argument("--out", type=Path, required=True, help="folder for vocab.txt and corpus.*.txt")
    p.add_argument("--threads", type=int, default=1, help="expanda worker processes")
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--limit_alphabet", type=int, default=1000)
    p.add_argument("--min_length", type=int, default=50, help="shortest sentence kept, in characters")
    p.add_argument("--max_length", type=int, default=1000, help="longest sentence kept, in characters")
    p.add_argument("--split_ratio", type=float, default=0.1, help="fraction of lines for corpus.test.txt")
    p.add_argument("--seed", type=int, default=0, help="seed of expanda's shuffle")
    p.set_defaults(func=_build_corpus)


def _add_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-shards", help="token lines -> uint16 shards + manifest.json")
    p.add_argument("--vocab_path", type=existing, required=True, help="expanda's vocab.txt")
    p.add_argument("--train_corpus", type=existing, required=True, help="expanda's corpus.train.txt")
    p.add_argument("--test_corpus", type=existing, required=True, help="expanda's corpus.test.txt")
    p.add_argument("--out", type=Path, required=True, help="folder for train/, test/ and manifest.json")
    p.add_argument("--shard_tokens", type=int, default=10_000_000, help="token ids per .bin shard")
    p.set_defaults(func=_make_shards)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpt2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_dump, _add_corpus, _add_shards, add_model_commands, _add_report):
        add(sub)
    return parser


FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
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
