"""Sharding throughput: corpus.train.txt -> uint16 ids, this project's streaming encoder vs a
straightforward baseline (tokenizers' WordPiece model encoding the same token lines). Both write
the same ids; needs the corpus of `snakemake results/corpus/vocab.txt`."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, alternate, table, write
from tokenizers import Tokenizer, models, pre_tokenizers

from gpt2.params import ShardsParams
from gpt2.shards import TokenStream, make_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=ROOT / "results/corpus")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    vocab, train, test = (args.corpus / n for n in ("vocab.txt", "corpus.train.txt", "corpus.test.txt"))
    if not train.exists():
        raise SystemExit(f"{train} is missing: run `snakemake --cores 2 results/corpus/vocab.txt` first")
    out = Path(tempfile.mkdtemp())
    baseline = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="<unk>"))
    baseline.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # the lines are already WordPiece tokens
    eos = baseline.token_to_id("</s>")
    tokens = {}

    def ours() -> int:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # its progress bars
            # Every line a document, as the baseline encodes them; the test lines serve as validation split too.
            manifest = make_shards(vocab, train, test, test, None, None, out / "ours", ShardsParams())
        tokens["ours"] = np.concatenate(TokenStream(out / "ours/manifest.json", "train").parts)
        return sum(split["tokens"] for split in manifest["splits"].values())

    def wordpiece() -> int:
        total = 0
        for name, path in (("train", train), ("valid", test), ("test", test)):
            lines = path.read_text(encoding="utf-8").splitlines()
            ids = np.fromiter((i for enc in baseline.encode_batch(lines) for i in [*enc.ids, eos]), dtype="<u2")
            ids.tofile(out / f"{name}.bin")
            total += len(ids)
            if name == "train":
                tokens["wordpiece"] = ids
        return total

    res = alternate({"ours": ours, "wordpiece": wordpiece}, repeats=args.repeats)
    assert np.array_equal(tokens["ours"], tokens["wordpiece"]), "both must produce the same ids"
    rows = [{"method": "this project (dict lookup, numpy, streaming)", "tok/s": res["ours"]["median"],
             "min-max": f"{res['ours']['min']:,.0f}-{res['ours']['max']:,.0f}"},
            {"method": "tokenizers WordPiece encode_batch", "tok/s": res["wordpiece"]["median"],
             "min-max": f"{res['wordpiece']['min']:,.0f}-{res['wordpiece']['max']:,.0f}"}]
    print(table(rows, ["method", "tok/s", "min-max"]))
    print(f"ratio ours/WordPiece: {res['ours']['median'] / res['wordpiece']['median']:.2f}")
    write("shards", {"rows": rows, "ratio": res["ours"]["median"] / res["wordpiece"]["median"], "runs": res})


if __name__ == "__main__":
    main()
