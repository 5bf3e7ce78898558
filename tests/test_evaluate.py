"""Stage 5: every test token predicted exactly once; the unigram floor on the same positions."""

from __future__ import annotations

import csv
import io
import json
import math
import pickle

import numpy as np
import pytest
import torch

from conftest import gpt2
from gpt2 import UserError
from gpt2.checkpoint import load_model
from gpt2.evaluate import stream_nll, unigram_nll, windows
from gpt2.model import GPT, GPTConfig


class ArrayStream:
    """The TokenStream interface over an in-memory array."""

    def __init__(self, ids):
        self.parts = [np.asarray(ids, dtype="<u2")]

    def __len__(self):
        return len(self.parts[0])

    def window(self, start, length):
        return self.parts[0][start: start + length]


@pytest.mark.parametrize("n, seq", [(2, 4), (9, 4), (10, 3), (100, 16), (17, 16)])
def test_windows_predict_every_token_once(n, seq):
    spans = windows(n, seq)
    predicted = [start + k + 1 for start, length in spans for k in range(length)]
    assert predicted == list(range(1, n))
    assert all(length == seq for _, length in spans[:-1])


def test_stream_nll_equals_token_by_token_scoring():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, seq_len=8, layers=1, heads=2, dims=16, mlp_ratio=4, dropout=0.0)).eval()
    ids = np.random.default_rng(0).integers(0, 50, 27)
    total, count = stream_nll(model, ArrayStream(ids), seq_len=8, batch=2, device=torch.device("cpu"))
    expected = 0.0
    for start, length in windows(len(ids), 8):
        x = torch.tensor(ids[start: start + length + 1], dtype=torch.long)[None]
        logits, _, _ = model(x[:, :-1])
        expected -= logits.log_softmax(-1)[0, torch.arange(length), x[0, 1:]].sum().item()
    assert count == 26 and total == pytest.approx(expected, rel=1e-5)


def test_unigram_is_add_one_smoothed_over_the_predicted_positions():
    train, test = ArrayStream([0, 1, 1, 2, 2, 2]), ArrayStream([2, 1, 3])
    total, count = unigram_nll(train, test, vocab_size=4)
    p = {1: 3 / 10, 3: 1 / 10}  # (count + 1) / (6 + 4); position 0 is never predicted
    assert count == 2 and total == pytest.approx(-math.log(p[1]) - math.log(p[3]))


class Boom:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.reliability
def test_checkpoints_that_are_not_weights_are_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"model": Boom(), "model_config": {}}, fh)
    with pytest.raises(UserError, match="not a loadable checkpoint"):
        load_model(tmp_path / "evil.pt", torch.device("cpu"))
    buf = io.BytesIO()
    torch.save({"model": {}, "model_config": {}}, buf)
    (tmp_path / "cut.pt").write_bytes(buf.getvalue()[:100])
    with pytest.raises(UserError, match="not a loadable checkpoint"):
        load_model(tmp_path / "cut.pt", torch.device("cpu"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a gpt2 checkpoint"):
        load_model(tmp_path / "other.pt", torch.device("cpu"))


def test_report_has_every_required_key(tiny_run):
    report = json.loads((tiny_run / "results/eval_tiny.json").read_text())
    for key in ("model", "params", "layers", "heads", "dims", "seq_len", "train_steps", "train_tokens", "eval_tokens",
                "loss", "perplexity", "bits_per_token", "unigram_perplexity", "tokens_per_second", "checkpoint",
                "seed", "versions", "bits_per_byte", "test_bytes"):
        assert key in report, key
    manifest = json.loads((tiny_run / "results/shards/manifest.json").read_text())
    assert report["eval_tokens"] == manifest["splits"]["test"]["tokens"] - 1  # every predicted position
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["bits_per_token"] == pytest.approx(report["loss"] / math.log(2))
    assert set(report["params"]) == {"non_embedding", "total"}
    assert set(report["versions"]) == {"python", "torch", "snakemake", "expanda"}
    assert (report["model"], report["layers"], report["dims"]) == ("tiny", 2, 64)


def test_bits_per_byte_is_the_nll_in_bits_over_the_test_bytes(tiny_run):
    """The bytes counted here from expanda's files: every test line of corpus.raw.txt, plus one separator."""
    report = json.loads((tiny_run / "results/eval_tiny.json").read_text())
    with open(tiny_run / "results/corpus/corpus.articles.tsv", encoding="utf-8", newline="") as fh:
        test_lines = sum(int(r["lines"]) for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
                         if r["split"] == "test")
    raw = (tiny_run / "results/corpus/corpus.raw.txt").read_text(encoding="utf-8").splitlines()[:test_lines]
    n_bytes = sum(len(line.encode("utf-8")) + 1 for line in raw)
    loss_sum = report["loss"] * report["eval_tokens"]
    assert report["test_bytes"] == n_bytes
    assert report["bits_per_byte"] == pytest.approx(loss_sum / math.log(2) / n_bytes, rel=1e-12)
    uni_sum = report["unigram_loss"] * report["eval_tokens"]
    assert report["unigram_bits_per_byte"] == pytest.approx(uni_sum / math.log(2) / n_bytes, rel=1e-12)
    assert report["bits_per_byte"] < report["unigram_bits_per_byte"]


def test_evaluate_text_scores_raw_text_as_the_shards(tiny_run, tmp_path):
    report = json.loads((tiny_run / "results/eval_tiny.json").read_text())
    proc = gpt2("evaluate", "--model_path", str(tiny_run / "results/train/tiny/model.pt"), "--text",
                str(tiny_run / "results/shards/test/text.txt"), "--vocab_path",
                str(tiny_run / "results/corpus/vocab.txt"), "--output", str(tmp_path / "text.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = json.loads(proc.stdout)
    assert text["eval_tokens"] == report["eval_tokens"] and text["test_bytes"] == report["test_bytes"]
    assert text["loss"] == pytest.approx(report["loss"], rel=1e-6)
    assert text["bits_per_byte"] == pytest.approx(report["bits_per_byte"], rel=1e-6)
    assert text["unigram_perplexity"] is None  # no train split to count a unigram model on
    mine = tmp_path / "mine.txt"  # any text: a blank line between documents
    mine.write_text("The history of the city is long.\nIt was founded in 1850.\n\nA second document.\n")
    proc = gpt2("evaluate", "--model_path", str(tiny_run / "results/train/tiny/model.pt"), "--text", str(mine),
                "--vocab_path", str(tiny_run / "results/corpus/vocab.txt"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["test_bytes"] == len(mine.read_bytes()) - 1  # the blank line is no byte
    proc = gpt2("evaluate", "--model_path", str(tiny_run / "results/train/tiny/model.pt"), "--text", str(mine))
    assert proc.returncode == 2 and "--text needs --vocab_path" in proc.stderr.splitlines()[-1]
