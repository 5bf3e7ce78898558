"""Stage 5: every test token predicted exactly once; the unigram floor on the same positions; any transformers
causal LM (--hf) on the same test bytes."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_CONFIG, gpt2, snakemake
from gpt2 import UserError
from gpt2.checkpoint import load_model
from gpt2.evaluate import hf_nll, stream_nll, strided_windows, unigram_nll, windows
from gpt2.model import GPT, GPTConfig
from gpt2.shards import TokenStream


def ArrayStream(ids) -> TokenStream:
    """A token stream over an in-memory array (its vocabulary: every uint16 id)."""
    return TokenStream.of(np.asarray(ids, dtype="<u2"), 1 << 16)


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
    assert set(report["versions"]) == {"python", "torch", "snakemake", "expanda", "transformers"}
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


def test_the_unigram_floor_from_counts_equals_scoring_every_test_token(tiny_run):
    from gpt2.evaluate import unigram_logprobs

    manifest = tiny_run / "results/shards/manifest.json"
    train, test = TokenStream(manifest, "train"), TokenStream(manifest, "test")
    vocab_size = train.manifest["vocab_size"]
    logp = unigram_logprobs(train, vocab_size)
    targets = np.concatenate([np.asarray(p) for p in test.parts])[1:]
    nll, count = unigram_nll(train, test, vocab_size)
    assert count == len(targets) and nll == pytest.approx(float(-logp[targets].sum()), rel=1e-12)
    nll, count = unigram_nll(train, test, vocab_size, limit=1001)
    assert count == 1000 and nll == pytest.approx(float(-logp[targets[:1000]].sum()), rel=1e-12)


@pytest.mark.parametrize("n, context, stride", [(2, 4, 2), (10, 4, 4), (10, 4, 1), (100, 16, 8), (17, 16, 5)])
def test_strided_windows_score_every_prediction_once_with_enough_context(n, context, stride):
    spans = strided_windows(n, context, stride)
    scored = []
    for start, count in spans:
        inputs = min(context, n - 1 - start)
        first = start + inputs - count  # the window's first scored input position
        assert first == start or first - start >= context - stride  # all there is, or context - stride before it
        scored += [first + k + 1 for k in range(count)]
    assert scored == list(range(1, n))
    if stride == context:
        assert [(s, c) for s, c in spans] == windows(n, context)


def test_hf_nll_equals_token_by_token_scoring():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = np.random.default_rng(0).integers(0, 50, 27)
    total, count = hf_nll(model, ids, context=8, stride=3, batch=2, device=torch.device("cpu"), bf16=False)
    expected = 0.0
    for start, scored in strided_windows(len(ids), 8, 3):
        x = torch.tensor(ids[start: start + 9], dtype=torch.long)[None]
        logp = model(x[:, :-1]).logits.log_softmax(-1)[0]
        expected -= logp[torch.arange(len(logp)), x[0, 1:]][-scored:].sum().item()
    assert count == 26 and total == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    proc = gpt2("export", "--model_path", str(tiny_run / "results/train/tiny/model.pt"), "--vocab_path",
                str(tiny_run / "results/corpus/vocab.txt"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("windows", [(), ("--context", "64", "--stride", "16")], ids=["disjoint", "stride-16"])
def test_our_export_through_hf_gives_our_bits_per_byte(tiny_run, tiny_export, tmp_path, windows):
    """The --hf path re-encodes the test text with the export's tokenizer: with the same windows (disjoint,
    or overlapping, which both paths take) it must reach our native bits per byte on the same bytes."""
    ours = json.loads((tiny_run / "results/eval_tiny.json").read_text())
    if windows:
        proc = gpt2("evaluate", "--model_path", str(tiny_run / "results/train/tiny/model.pt"), "--shards",
                    str(tiny_run / "results/shards/manifest.json"), *windows)
        assert proc.returncode == 0, proc.stderr[-2000:]
        strided = json.loads(proc.stdout)
        assert (strided["context"], strided["stride"]) == (64, 16) and strided["eval_tokens"] == ours["eval_tokens"]
        assert strided["loss"] < ours["loss"]  # every prediction sees >= 48 tokens, not 0 to 63
        ours = strided
    hf_windows = windows or ("--stride", str(ours["seq_len"]))
    proc = gpt2("evaluate", "--hf", str(tiny_export), "--shards", str(tiny_run / "results/shards/manifest.json"),
                *hf_windows, "--output", str(tmp_path / "hf.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    hf = json.loads((tmp_path / "hf.json").read_text())
    assert hf["test_bytes"] == ours["test_bytes"] and (hf["context"], hf["stride"]) == (ours["context"],
                                                                                      ours["stride"])
    assert hf["eval_tokens"] == ours["eval_tokens"] + 1  # also the first token, after the leading end-of-text
    assert hf["bits_per_byte"] == pytest.approx(ours["bits_per_byte"], rel=0.005)
    assert hf["tokens_per_byte"] == pytest.approx(hf["eval_tokens"] / hf["test_bytes"])
    assert hf["params"]["non_embedding"] == ours["params"]["non_embedding"]  # counted alike
    # WordPiece lowercases and respaces: neither path's bits per byte count only what the model predicted
    assert ours["tokenizer_round_trip"] is False and hf["tokenizer_round_trip"] is False
    assert hf["round_trip_failures"] > 0 and "does not give back the text of" in proc.stderr
    for key in ("loss", "perplexity", "bits_per_token", "versions", "device", "precision", "tokens_per_second"):
        assert key in hf, key


def test_windows_beyond_the_models_context_are_refused(tiny_run, tiny_export):
    for model in (("--model_path", str(tiny_run / "results/train/tiny/model.pt")), ("--hf", str(tiny_export))):
        proc = gpt2("evaluate", *model, "--shards", str(tiny_run / "results/shards/manifest.json"),
                    "--context", "129")
        assert proc.returncode == 2 and "--context 129 is more than" in proc.stderr.splitlines()[-1]
        proc = gpt2("evaluate", *model, "--shards", str(tiny_run / "results/shards/manifest.json"),
                    "--context", "32", "--stride", "33")
        assert proc.returncode == 2 and "--stride 33 is more than the scoring context of 32" in proc.stderr


def test_hf_nll_scores_in_bounded_chunks_what_the_whole_logits_give():
    """gpt2-xl's logits for a batch of 16 x 512 scored positions would be 1.6 GB: hf_nll makes them in chunks."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = np.random.default_rng(1).integers(0, 50, 40)
    whole = hf_nll(model, ids, 8, 3, 4, torch.device("cpu"), False, chunk_tokens=10**6)
    chunked = hf_nll(model, ids, 8, 3, 4, torch.device("cpu"), False, chunk_tokens=5)
    assert chunked[1] == whole[1] == 39 and chunked[0] == pytest.approx(whole[0], rel=1e-6)


def test_a_hub_id_without_network_or_cache_is_one_error(tiny_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gpt2", "evaluate", "--hf", "gpt2", "--shards",
                           str(tiny_run / "results/shards/manifest.json")], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1",
                                   HF_HOME=str(tmp_path / "hf")), timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --hf gpt2 (a hub id) could not be loaded") and "cache" in last, proc.stderr
    proc = gpt2("evaluate", "--hf", "gpt2", "--eval_corpus", str(tiny_run / "results/corpus/corpus.test.txt"),
                "--vocab_path", str(tiny_run / "results/corpus/vocab.txt"))
    assert proc.returncode == 2 and "--hf scores raw text" in proc.stderr.splitlines()[-1]


def _random_gpt2(folder: Path, tiny_export: Path):
    """An untrained 1-layer transformers GPT-2 with our export's tokenizer, saved in `folder`; its tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer, sum(p.numel() for p in model.parameters())


def test_a_hub_baseline_is_fetched_on_the_login_node_and_scored_from_its_folder(tiny_run, tiny_export, tmp_path):
    """fetch_baseline (a localrule) copies the hub model out of the Hugging Face cache (offline here, as a
    filled cache is); baseline scores the folder, and its JSON names the hub id and revision."""
    from gpt2.launch import hf_param_count

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf/hub/models--testorg--hub-gpt2"  # the cache's layout: refs/main -> snapshots/<sha>/
    _, params = _random_gpt2(repo / "snapshots" / revision, tiny_export)
    (repo / "snapshots" / revision / "pytorch_model.bin").write_bytes(b"a pickle: never copied")
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(revision)
    config = {**TINY_CONFIG, "baselines": {"models": ["testorg/hub-gpt2"]}}
    proc = snakemake(tiny_run, "results/baseline_hub-gpt2.json", config=config,
                     env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "localrule fetch_baseline:" in proc.stdout + proc.stderr
    fetched = tiny_run / "resources/hf/hub-gpt2"
    assert json.loads((fetched / "source.json").read_text()) == {"hf": "testorg/hub-gpt2", "revision": revision}
    assert not (fetched / "pytorch_model.bin").exists() and hf_param_count(fetched) == params
    baseline = json.loads((tiny_run / "results/baseline_hub-gpt2.json").read_text())
    assert (baseline["model"], baseline["hf"], baseline["revision"]) == ("hub-gpt2", "testorg/hub-gpt2", revision)
    proc = gpt2("fetch-hf", "--hf", "../../etc", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "is not a hub id" in proc.stderr.splitlines()[-1]


def test_a_local_transformers_gpt2_is_a_baseline_in_the_report_table(tiny_run, tiny_export, tmp_path):
    """baselines.models names a folder: `baseline` scores it on the test articles and the table sets it beside ours."""
    folder = tmp_path / "random-gpt2"
    tokenizer, _ = _random_gpt2(folder, tiny_export)
    config = {**TINY_CONFIG, "report": {"models": ["tiny"]}, "baselines": {"models": [str(folder)]}}
    proc = snakemake(tiny_run, "results/tables/baselines.csv", config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule train:" not in proc.stdout + proc.stderr  # only the baseline and the table ran
    baseline = json.loads((tiny_run / "results/baseline_random-gpt2.json").read_text())
    assert baseline["hf"] == str(folder) and baseline["stride"] == 32  # half the context
    rows = list(csv.DictReader(open(tiny_run / "results/tables/baselines.csv")))
    assert [r["model"] for r in rows] == ["tiny", "tiny (stride 64)", "random-gpt2"]
    assert [r["source"] for r in rows] == ["ours", "ours", str(folder)]
    assert [(r["context"], r["stride"], r["min context"]) for r in rows] == [
        ("128", "128", "0"), ("128", "64", "64"), ("64", "32", "32")]  # ours at 128, the baseline's own 64
    assert rows[0]["test bytes"] == rows[1]["test bytes"] == rows[2]["test bytes"]
    assert rows[1]["bits/byte"] != rows[0]["bits/byte"] and rows[0]["text round-trips"] == "no"  # WordPiece
    # an untrained model is about uniform over the vocabulary: log2(V) bits per token
    per_token = float(rows[2]["bits/byte"]) / float(rows[2]["tokens/byte"])
    assert per_token == pytest.approx(math.log2(len(tokenizer)), rel=0.05)
