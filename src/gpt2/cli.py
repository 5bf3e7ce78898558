"""`python -m gpt2 <command>`: one entry point for the Snakemake rules and for users.

Each command parses flags and calls the stage module; bad input surfaces as a
single `error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt2 import UserError


def _fetch_dump(args: argparse.Namespace) -> None:
    from gpt2.dump import fetch_dump

    fetch_dump(args.source, args.out, url=args.url, path=args.path, sha1=args.sha1, md5=args.md5,
               verify_sums=not args.no_verify, retries=args.retries, timeout=args.timeout)


def _patch_expanda(args: argparse.Namespace) -> None:
    from gpt2.corpus import patch_expanda

    patch_expanda(args.out, args.patches)


def _build_corpus(args: argparse.Namespace) -> None:
    from gpt2.corpus import build_corpus

    build_corpus(args.dump, args.expanda, args.out, threads=args.threads, vocab_size=args.vocab_size,
                 limit_alphabet=args.limit_alphabet, min_length=args.min_length, max_length=args.max_length,
                 split_ratio=args.split_ratio, seed=args.seed)


def _add_dump(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-dump", help="put a verified Wikipedia dump in place")
    p.add_argument("--source", choices=["sample", "url", "path"], default="sample",
                   help="sample: enwiki sample in the gensim wheel; url: download; path: a local file")
    p.add_argument("--out", type=Path, required=True, help="destination .xml.bz2 (a .json sidecar goes beside)")
    p.add_argument("--url", default="", help="dump URL for --source url")
    p.add_argument("--path", default="", help="local .xml.bz2 for --source path")
    p.add_argument("--sha1", default="", help="expected sha1 (default for url: the published sha1sums)")
    p.add_argument("--md5", default="", help="expected md5")
    p.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    p.add_argument("--retries", type=int, default=5, help="download retries after the first attempt")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.set_defaults(func=_fetch_dump)


def _add_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch-expanda", help="copy the installed expanda and apply patches/")
    p.add_argument("--out", type=Path, required=True, help="folder for the patched copy")
    p.add_argument("--patches", type=Path, default=Path("patches"), help="folder of *.patch files")
    p.set_defaults(func=_patch_expanda)

    p = sub.add_parser("build-corpus", help="run the patched expanda on a dump")
    p.add_argument("--dump", type=Path, required=True, help="the .xml.bz2 dump")
    p.add_argument("--expanda", type=Path, required=True, help="the patched expanda folder")
    p.add_argument("--out", type=Path, required=True, help="folder for vocab.txt and corpus.*.txt")
    p.add_argument("--threads", type=int, default=1, help="expanda worker processes")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--limit-alphabet", type=int, default=1000)
    p.add_argument("--min-length", type=int, default=50, help="shortest sentence kept, in characters")
    p.add_argument("--max-length", type=int, default=1000, help="longest sentence kept, in characters")
    p.add_argument("--split-ratio", type=float, default=0.1, help="fraction of lines for corpus.test.txt")
    p.add_argument("--seed", type=int, default=0, help="seed of expanda's shuffle")
    p.set_defaults(func=_build_corpus)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpt2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_dump, _add_corpus):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
