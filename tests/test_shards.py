"""Stage 3: shards round-trip to the token lines, the manifest tells the truth."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2 import UserError
from gpt2.files import file_digest
from gpt2.params import ShardsParams
from conftest import ROOT
from gpt2.shards import DTYPE, TokenStream, make_shards, shards_for_text, text_stream
from gpt2.vocab import load_vocab

VOCAB = ["<unk>", "<s>", "</s>", "<pad>", "the", "cat", "sat", "on", "mat", "##s", "."]


def _corpus(tmp_path: Path, train: list[str], test: list[str]) -> tuple[Path, Path, Path]:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    paths = []
    for name, lines in (("train", train), ("test", test)):
        path = tmp_path / f"corpus.{name}.txt"
        path.write_text("".join(line + "\n" for line in lines))
        paths.append(path)
    return vocab, *paths


def _decode(stream: TokenStream) -> list[str]:
    ids = np.concatenate(stream.parts).tolist()
    lines, line = [], []
    for i in ids:
        if VOCAB[i] == "</s>":
            lines.append(" ".join(line))
            line = []
        else:
            line.append(VOCAB[i])
    assert not line, "the stream must end with </s>"
    return lines


def test_round_trip_and_manifest(tmp_path):
    train = ["the cat sat on the mat .", "the cat ##s sat .", "mat ."] * 7
    test = ["the mat .", "on the cat ."]
    vocab, tr, te = _corpus(tmp_path, train, test)
    manifest = make_shards(vocab, tr, te, te, None, None, tmp_path / "shards", ShardsParams(shard_tokens=16))
    assert _decode(TokenStream(tmp_path / "shards/manifest.json", "train")) == train
    assert _decode(TokenStream(tmp_path / "shards/manifest.json", "test")) == test
    split = manifest["splits"]["train"]
    assert split["lines"] == len(train)
    assert split["tokens"] == sum(len(line.split()) + 1 for line in train)
    assert [s["tokens"] for s in split["shards"]][:-1] == [16] * (len(split["shards"]) - 1)
    for shard in split["shards"]:
        path = tmp_path / "shards" / shard["file"]
        assert path.stat().st_size == shard["tokens"] * DTYPE.itemsize
        assert file_digest(path) == shard["sha256"]
    assert manifest["vocab_sha256"] == file_digest(vocab)
    assert manifest["special_ids"] == {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    assert json.loads((tmp_path / "shards/manifest.json").read_text()) == manifest
    assert not list((tmp_path / "shards").glob(".staging-*"))


def test_windows_cross_shard_boundaries(tmp_path):
    vocab, tr, te = _corpus(tmp_path, ["the cat sat on the mat ."] * 10, ["the mat ."])
    make_shards(vocab, tr, te, te, None, None, tmp_path / "shards", ShardsParams(shard_tokens=7))
    stream = TokenStream(tmp_path / "shards/manifest.json", "train")
    whole = np.concatenate(stream.parts)
    assert len(stream.parts) > 5 and len(stream) == len(whole)
    for start in range(0, len(whole) - 20):
        assert np.array_equal(stream.window(start, 20), whole[start: start + 20])


@pytest.mark.reliability
def test_unknown_tokens_map_to_unk_and_are_counted(tmp_path):
    vocab, tr, te = _corpus(tmp_path, ["the dog sat on the sofa .", "<unk> cat ."], ["the mat ."])
    manifest = make_shards(vocab, tr, te, te, None, None, tmp_path / "shards", ShardsParams(shard_tokens=100))
    split = manifest["splits"]["train"]
    assert (split["missing_from_vocab"], split["unk_tokens"]) == (2, 3)
    assert _decode(TokenStream(tmp_path / "shards/manifest.json", "train"))[0] == "the <unk> sat on the <unk> ."


@pytest.mark.parametrize("vocab, message", [
    (VOCAB + ["cat"], "token 'cat' appears more than once"),
    (VOCAB[1:], "must start with <unk> <s> </s> <pad>"),
    (VOCAB[:4] + [f"t{i}" for i in range(70000)], "do not fit uint16 shards"),
])
@pytest.mark.reliability
def test_bad_vocab_is_refused(tmp_path, vocab, message):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    with pytest.raises(UserError, match=message):
        load_vocab(path)


@pytest.mark.reliability
def test_a_bpe_vocabulary_over_uint16_or_without_its_end_token_is_refused(tmp_path):
    """corpus.vocab_size stops at 65,535 when the config is read; a tokenizer.json given as input_vocab
    (or made elsewhere) is checked when it is loaded."""
    from tokenizers import Tokenizer, models

    from gpt2.vocab import ENDOFTEXT

    big = {ENDOFTEXT: 0, **{f"t{i}": i + 1 for i in range(70000)}}
    for name, vocab, message in (("big.json", big, "70001 tokens do not fit uint16 shards"),
                                 ("noend.json", {"a": 0, "b": 1}, "has no <\\|endoftext\\|> token")):
        Tokenizer(models.BPE(vocab=vocab, merges=[])).save(str(tmp_path / name))
        with pytest.raises(UserError, match=message):
            load_vocab(tmp_path / name)


@pytest.mark.reliability
def test_empty_corpus_leaves_no_output(tmp_path):
    vocab, tr, te = _corpus(tmp_path, [], ["the mat ."])
    with pytest.raises(UserError, match="empty corpus"):
        make_shards(vocab, tr, te, te, None, None, tmp_path / "shards", ShardsParams(shard_tokens=100))
    assert not (tmp_path / "shards/manifest.json").exists() and not (tmp_path / "shards/train").exists()


def test_processes_starting_together_shard_text_corpora_once(tmp_path):
    """As torchrun ranks do: the first takes the lock and shards, the others wait and reuse its shards."""
    vocab, tr, te = _corpus(tmp_path, ["the cat sat on the mat ."] * 2000, ["the mat ."] * 50)
    code = ("import sys; from pathlib import Path; from gpt2.shards import shards_for_text; "
            "shards_for_text(*map(Path, sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(vocab), str(tr), str(te), str(tmp_path / "shards")],
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    logs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    assert sum("sharded " in log for log in logs) == 1 and sum("reusing the shards" in log for log in logs) == 2
    tr.write_text("the cat .\n")  # a changed corpus is sharded anew
    shards_for_text(vocab, tr, te, tmp_path / "shards")
    assert _decode(TokenStream(tmp_path / "shards/manifest.json", "train")) == ["the cat ."]


def test_sample_shards_match_the_corpus(tiny_run):
    manifest = json.loads((tiny_run / "results/shards/manifest.json").read_text())
    articles = list(csv.DictReader(open(tiny_run / "results/corpus/corpus.articles.tsv", encoding="utf-8"),
                                   delimiter="\t", quoting=csv.QUOTE_NONE))
    for split in ("train", "valid", "test"):
        lines = (tiny_run / f"results/corpus/corpus.{split}.txt").read_text(encoding="utf-8").splitlines()
        entry = manifest["splits"][split]
        assert entry["lines"] == len(lines) and entry["documents"] == sum(a["split"] == split for a in articles)
        assert entry["tokens"] == sum(len(line.split()) for line in lines) + entry["documents"]  # + one </s> each
    assert manifest["vocab_size"] == 8000 and manifest["tokens_per_second"] > 0 and manifest["unit"] == "article"


def test_articles_are_documents_and_bytes_count_the_raw_text(tmp_path):
    test, valid, train = ["the cat sat .", "on the mat ."], ["the mat ."], ["the cat .", "sat .", "mat ."]
    raw = ["The cat sat.", "On the mat.", "The mat.", "The cat.", "Sat.", "Mat."]  # test, valid, train order
    vocab, tr, te = _corpus(tmp_path, train, test)
    (tmp_path / "corpus.valid.txt").write_text("".join(line + "\n" for line in valid))
    (tmp_path / "corpus.raw.txt").write_text("".join(line + "\n" for line in raw))
    (tmp_path / "articles.tsv").write_text("split\tpage_id\ttitle\tlines\ntest\t7\tCats\t2\nvalid\t3\tMats\t1\n"
                                           "train\t9\tA\t2\ntrain\t4\tB\t1\n")
    manifest = make_shards(vocab, tr, tmp_path / "corpus.valid.txt", te, tmp_path / "corpus.raw.txt",
                           tmp_path / "articles.tsv", tmp_path / "shards", ShardsParams(shard_tokens=1024))
    stream = lambda split: _decode(TokenStream(tmp_path / "shards/manifest.json", split))  # noqa: E731
    assert stream("test") == ["the cat sat . on the mat ."] and stream("train") == ["the cat . sat .", "mat ."]
    splits = manifest["splits"]
    assert [splits[s]["documents"] for s in ("test", "valid", "train")] == [1, 1, 2]
    assert splits["test"]["bytes"] == len("The cat sat.") + 1 + len("On the mat.") + 1
    assert splits["train"]["bytes"] == sum(len(r) + 1 for r in raw[3:])
    assert (tmp_path / "shards/test/text.txt").read_text() == "The cat sat.\nOn the mat.\n\n"
    (tmp_path / "articles.tsv").write_text("split\tpage_id\ttitle\tlines\ntest\t7\tCats\t3\n")
    with pytest.raises(UserError, match="fewer lines than corpus.articles.tsv"):
        make_shards(vocab, tr, tmp_path / "corpus.valid.txt", te, None, tmp_path / "articles.tsv", tmp_path / "s2",
                    ShardsParams())


def test_raw_text_reads_back_to_the_test_shards(tiny_run):
    shards = tiny_run / "results/shards"
    stream, n_bytes = text_stream(shards / "test/text.txt", tiny_run / "results/corpus/vocab.txt")
    test = TokenStream(shards / "manifest.json", "test")
    assert np.array_equal(np.concatenate(stream.parts), np.concatenate(test.parts))
    assert n_bytes == test.manifest["splits"]["test"]["bytes"]


def test_each_splits_id_counts_are_made_with_its_shards(tiny_run):
    """counts.npy beside each split's shards (summed over the buckets) is the bincount of its ids, so
    training's prior and evaluation's unigram floor never read a split to count it."""
    manifest = tiny_run / "results/shards/manifest.json"
    for split in ("train", "valid", "test"):
        stream = TokenStream(manifest, split)
        assert stream._counts is not None and stream._counts.is_file()
        ids = np.concatenate([np.asarray(p) for p in stream.parts])
        expected = np.bincount(ids, minlength=stream.manifest["vocab_size"])
        assert np.array_equal(stream.counts(), expected)
        assert int(stream.counts().sum()) == stream.manifest["splits"][split]["tokens"]
