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
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gpt2 import UserError
from gpt2.files import atomic_path
from gpt2.model import GPT, GPTConfig
from gpt2.shards import TokenStream, check_vocab


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


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 / AMX): there bf16 autocast trains ~1.8x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def use_bf16(amp: str, device: torch.device) -> bool:
    """amp: on / off, or auto = CUDA, and CPUs with native bf16."""
    if amp in ("on", "off"):
        return amp == "on"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def half_dtype(device: torch.device) -> torch.dtype:
    """bf16, or fp16 on GPUs without bf16 (before Ampere), where training then needs a GradScaler."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    """Mixed-precision autocast on `device` when enabled (the loss is always computed in fp32)."""
    return torch.autocast(device.type, dtype=half_dtype(device), enabled=enabled)


def unigram_nll(train: TokenStream, test: TokenStream, vocab_size: int, limit: int | None = None
                ) -> tuple[float, int]:
    """Add-one-smoothed unigram model from train counts, scored on test tokens 1..n-1 (of the first `limit`)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for part in train.parts:
        counts += np.bincount(part, minlength=vocab_size)[:vocab_size]
    logp = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    targets = np.concatenate(test.parts)[1:limit]
    return float(-logp[targets].sum()), len(targets)


def load_model(path: str | Path, device: torch.device) -> tuple[GPT, dict]:
    """A model.pt (or checkpoint) written by training, loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file; train it first (rule train)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, pickles with code, non-checkpoints all land here
        raise UserError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise UserError(f"{path}: not a gpt2 checkpoint (no model/model_config entries)")
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device), state


def check_architecture(cfg: GPTConfig, expect: dict, source: Path) -> None:
    """Dims a user named (flags) must agree with the checkpoint, which is what gets used."""
    for name, value in expect.items():
        if value != getattr(cfg, name):
            raise UserError(f"--{name} {value} does not match the checkpoint's {getattr(cfg, name)} ({source}); "
                            "drop the flag or pass the right model")


def versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {"python": platform.python_version(), "torch": torch.__version__, "snakemake": version("snakemake"),
            "expanda": version("expanda")}


def evaluate(model_path: Path, manifest: Path, out: Path | None, name: str, batch: int = 16,
             device: str = "auto", amp: str = "auto", threads: int | None = None, max_batches: int = -1,
             expect: dict | None = None, baseline: bool = True) -> dict:
    """Score `model_path` on the test shards; write the JSON report to `out` atomically.

    `max_batches` > 0 scores only the first batches; `expect` holds dims the
    caller insists on; without a train split (`baseline` False) the unigram
    keys are null.
    """
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    if threads:
        torch.set_num_threads(threads)
    model, state = load_model(model_path, dev)
    bf16 = use_bf16(amp, dev)
    cfg = model.cfg
    check_architecture(cfg, expect or {}, model_path)
    check_vocab(manifest)
    train, test = TokenStream(manifest, "train"), TokenStream(manifest, "test")
    if test.manifest["vocab_size"] != cfg.vocab_size:
        raise UserError(f"{model_path}: model vocabulary {cfg.vocab_size} != shards' {test.manifest['vocab_size']}")
    started = time.perf_counter()
    limit = max_batches * batch * cfg.seq_len + 1 if max_batches > 0 else None
    nll, count = stream_nll(model, test, cfg.seq_len, batch, dev, limit=limit, progress=True, bf16=bf16)
    seconds = time.perf_counter() - started
    uni = None
    if baseline:
        uni, uni_count = unigram_nll(train, test, cfg.vocab_size, limit)
        assert uni_count == count, "model and unigram must score the same positions"
    loss = nll / count
    report = {
        "model": name,
        "params": model.num_params(),
        "layers": cfg.layers,
        "heads": cfg.heads,
        "dims": cfg.dims,
        "seq_len": cfg.seq_len,
        "vocab_size": cfg.vocab_size,
        "train_steps": state["step"],
        "train_tokens": state["tokens"],
        "eval_tokens": count,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_token": loss / math.log(2),
        "unigram_loss": None if uni is None else uni / count,
        "unigram_perplexity": None if uni is None else math.exp(uni / count),
        "tokens_per_second": count / seconds,
        "checkpoint": str(model_path),
        "seed": state["train_config"]["seed"],
        "device": str(dev),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "versions": versions(),
    }
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    floor = "n/a" if uni is None else f"{report['unigram_perplexity']:.1f}"
    print(f"{name}: loss {loss:.4f} nats, perplexity {report['perplexity']:.1f} "
          f"(unigram {floor}) over {count:,} tokens, "
          f"{report['tokens_per_second']:,.0f} tokens/s", file=sys.stderr)
    return report
