"""Stage 5: honest test metrics -- mean NLL over every predicted test token.

The test stream is cut into consecutive windows of `seq_len` inputs; window i
predicts tokens i*S+1 .. i*S+S, the last window is simply shorter (no token
dropped, no padding). The unigram baseline is scored on exactly the same
predicted positions.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gpt2 import UserError, checkpoint
from gpt2.device import autocast, precision_name, resolve_device, set_threads, use_bf16
from gpt2.files import atomic_path
from gpt2.model import GPT
from gpt2.params import EvaluateParams, Hardware
from gpt2.shards import TokenStream, check_vocab, manifest_for, text_stream


def windows(n_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, inputs) pairs covering all n_tokens - 1 predictions of a stream."""
    predicted = n_tokens - 1
    return [(start, min(seq_len, predicted - start)) for start in range(0, predicted, seq_len)]


@torch.inference_mode()
def stream_nll(model: GPT, stream: TokenStream, seq_len: int, batch: int, device: torch.device,
               limit: int | None = None, progress: bool = False, bf16: bool = False) -> tuple[float, int]:
    """(sum of NLL in nats, number of predicted tokens) over the stream (or its first `limit` tokens)."""
    n = len(stream) if limit is None else min(limit, len(stream))
    spans = windows(n, seq_len)
    full = [s for s in spans if s[1] == seq_len]
    groups = [full[i: i + batch] for i in range(0, len(full), batch)] + [[s] for s in spans if s[1] != seq_len]
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for group in tqdm(groups, desc="evaluate", disable=not progress, mininterval=5):
        rows = np.stack([stream.window(start, length + 1) for start, length in group]).astype(np.int64)
        ids = torch.from_numpy(rows).to(device, non_blocking=True)
        with autocast(device, bf16):
            _, loss, _ = model(ids[:, :-1], ids[:, 1:], reduction="sum")
        total += float(loss)
        count += ids[:, 1:].numel()
    model.train(was_training)
    return total, count


def unigram_logprobs(train: TokenStream, vocab_size: int) -> np.ndarray:
    """Log-probabilities of the add-one-smoothed unigram model of the train split, counted shard by shard."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for part in train.parts:
        counts += np.bincount(part, minlength=vocab_size)[:vocab_size]
    return np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)


def unigram_nll(train: TokenStream, test: TokenStream, vocab_size: int, limit: int | None = None
                ) -> tuple[float, int]:
    """Add-one-smoothed unigram model from train counts, scored on test tokens 1..n-1 (of the first `limit`)."""
    logp = unigram_logprobs(train, vocab_size)
    targets = np.concatenate(test.parts)[1:limit]
    return float(-logp[targets].sum()), len(targets)


def versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {"python": platform.python_version(), "torch": torch.__version__, "snakemake": version("snakemake"),
            "expanda": version("expanda")}


def evaluate(model: GPT, test: TokenStream, train: TokenStream | None, test_bytes: int | None, batch_eval: int,
             device: torch.device, bf16: bool, max_batches: int) -> dict:
    """Loss, perplexity, bits per token and per byte of `model` on `test`; the unigram floor from `train`.

    Bits per byte divide the total NLL in bits by the UTF-8 bytes of the test
    text (`test_bytes`, as shards.shard_split counts them); they are None when
    the bytes are unknown or `max_batches` > 0 scores only the first batches.
    Without `train` the unigram keys are None.
    """
    seq_len = model.cfg.seq_len
    limit = max_batches * batch_eval * seq_len + 1 if max_batches > 0 else None
    started = time.perf_counter()
    nll, count = stream_nll(model, test, seq_len, batch_eval, device, limit=limit, progress=True, bf16=bf16)
    seconds = time.perf_counter() - started
    uni = None
    if train is not None:
        uni, uni_count = unigram_nll(train, test, model.cfg.vocab_size, limit)
        assert uni_count == count, "model and unigram must score the same positions"
    loss = nll / count
    per_byte = test_bytes if test_bytes and limit is None else None
    return {"eval_tokens": count, "loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
            "bits_per_byte": None if per_byte is None else nll / math.log(2) / per_byte,
            "test_bytes": per_byte,
            "unigram_loss": None if uni is None else uni / count,
            "unigram_perplexity": None if uni is None else math.exp(uni / count),
            "unigram_bits_per_byte": None if uni is None or per_byte is None else uni / math.log(2) / per_byte,
            "tokens_per_second": count / seconds}


def _test_data(shards: Path | None, eval_corpus: Path | None, text: Path | None, train_corpus: Path | None,
               vocab_path: Path | None, workdir: Path) -> tuple[TokenStream, TokenStream | None, int | None]:
    """The test stream, the train stream for the unigram floor (or None) and the test text's bytes (or None)."""
    if text is not None:
        if vocab_path is None:
            raise UserError("--text needs --vocab_path: the vocab.txt or tokenizer.json the model was trained with")
        stream, n_bytes = text_stream(text, vocab_path)
        return stream, None, n_bytes
    manifest = manifest_for(shards, train_corpus, eval_corpus, vocab_path, workdir / "shards", need_train=False)
    check_vocab(manifest)
    test = TokenStream(manifest, "test")
    # A text eval corpus without --train_corpus has no train split to count the unigram floor on.
    has_train = shards is not None or eval_corpus.suffix == ".json" or train_corpus is not None
    return test, TokenStream(manifest, "train") if has_train else None, test.manifest["splits"]["test"].get("bytes")


def evaluate_command(model_path: Path, output: Path | None, name: str, shards: Path | None,
                     eval_corpus: Path | None, text: Path | None, train_corpus: Path | None,
                     vocab_path: Path | None, expect: dict, params: EvaluateParams, hardware: Hardware) -> dict:
    """`python -m gpt2 evaluate`: score a model.pt, print the JSON report and write it to `output` atomically."""
    dev = resolve_device(hardware.device)
    set_threads(hardware.threads)
    model, state = checkpoint.load_model(model_path, dev)
    checkpoint.check_architecture(model.cfg, expect, model_path)
    bf16 = use_bf16(hardware.amp, dev)
    with tempfile.TemporaryDirectory() as tmp:
        test, train, test_bytes = _test_data(shards, eval_corpus, text, train_corpus, vocab_path, Path(tmp))
        if test.manifest["vocab_size"] != model.cfg.vocab_size:
            raise UserError(f"{model_path}: model vocabulary {model.cfg.vocab_size} != the test data's "
                            f"{test.manifest['vocab_size']}; pass the vocab.txt or tokenizer.json the model was "
                            "trained with")
        numbers = evaluate(model, test, train, test_bytes, params.batch_eval, dev, bf16, params.max_batches)
    cfg = model.cfg
    report = {"model": name or Path(model_path).parent.name, "params": model.num_params(), "layers": cfg.layers,
              "heads": cfg.heads, "dims": cfg.dims, "seq_len": cfg.seq_len, "vocab_size": cfg.vocab_size,
              "train_steps": state["step"], "train_tokens": state["tokens"], **numbers,
              "checkpoint": str(model_path), "selected": state.get("selected", "final"),
              "valid_loss": state.get("valid_loss"), "seed": state["train_config"]["seed"], "device": str(dev),
              "precision": precision_name(bf16, dev), "versions": versions()}
    if output is not None:
        with atomic_path(output) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    floor = "n/a" if train is None else f"{report['unigram_perplexity']:.1f}"
    per_byte = "n/a" if report["bits_per_byte"] is None else f"{report['bits_per_byte']:.4f}"
    print(f"{report['model']}: loss {report['loss']:.4f} nats, perplexity {report['perplexity']:.1f} "
          f"(unigram {floor}), {per_byte} bits/byte over {report['eval_tokens']:,} tokens, "
          f"{report['tokens_per_second']:,.0f} tokens/s", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return report
