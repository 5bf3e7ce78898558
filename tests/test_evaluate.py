"""Stage 5: every test token predicted exactly once; the unigram floor on the same positions."""

from __future__ import annotations

import io
import json
import math
import pickle

import numpy as np
import pytest
import torch

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
    model = GPT(GPTConfig(vocab_size=50, seq_len=8, layers=1, heads=2, dims=16, rate=4, dropout=0.0)).eval()
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
                "seed", "versions"):
        assert key in report, key
    manifest = json.loads((tiny_run / "results/shards/manifest.json").read_text())
    assert report["eval_tokens"] == manifest["splits"]["test"]["tokens"] - 1  # every predicted position
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["bits_per_token"] == pytest.approx(report["loss"] / math.log(2))
    assert set(report["params"]) == {"non_embedding", "total"}
    assert set(report["versions"]) == {"python", "torch", "snakemake", "expanda"}
    assert (report["model"], report["layers"], report["dims"]) == ("tiny", 2, 64)
