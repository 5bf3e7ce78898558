"""Stage 5: honest test metrics -- mean NLL over every predicted test token.

The test stream is cut into consecutive windows of `seq_len` inputs; window i
predicts tokens i*S+1 .. i*S+S, the last window is simply shorter (no token
dropped, no padding). The unigram baseline is scored on exactly the same
predicted positions.

`--hf` scores any transformers causal LM (OpenAI's GPT-2, our own export) on
the same test documents: its tokenizer re-encodes each document's text, and
bits per byte -- the NLL of every byte of that text -- compare models whatever
their tokenizers.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import math
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gpt2 import UserError, checkpoint
from gpt2.device import autocast, precision_name, resolve_device, set_threads, use_bf16
from gpt2.files import atomic_dir, atomic_path
from gpt2.model import GPT, chunked_nll
from gpt2.params import BaselineParams, EvaluateParams, Hardware
from gpt2.shards import TokenStream, check_vocab, manifest_for, text_documents, text_stream
from gpt2.vocab import is_bpe


def windows(n_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, inputs) pairs covering all n_tokens - 1 predictions of a stream."""
    predicted = n_tokens - 1
    return [(start, min(seq_len, predicted - start)) for start in range(0, predicted, seq_len)]


@torch.inference_mode()
def stream_nll(model: GPT, stream: TokenStream, seq_len: int, batch: int, device: torch.device,
               limit: int | None = None, progress: bool = False, bf16: bool = False,
               stride: int | None = None) -> tuple[float, int]:
    """(sum of NLL in nats, number of predicted tokens) over the stream (or its first `limit` tokens):
    disjoint windows of seq_len inputs, or with a `stride` < seq_len overlapping ones (strided_windows)."""
    n = len(stream) if limit is None else min(limit, len(stream))
    if stride is not None and stride < seq_len:
        return _strided_nll(model.nll, stream.window, n, seq_len, stride, batch, device, bf16, progress, model)
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
            loss = model.nll(ids[:, :-1], ids[:, 1:])
        total += float(loss)
        count += ids[:, 1:].numel()
    model.train(was_training)
    return total, count


def unigram_logprobs(train: TokenStream, vocab_size: int) -> np.ndarray:
    """Log-probabilities of the add-one-smoothed unigram model of the train split (its counts.npy)."""
    counts = train.counts()[:vocab_size]
    return np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)


def unigram_nll(train: TokenStream, test: TokenStream, vocab_size: int, limit: int | None = None
                ) -> tuple[float, int]:
    """Add-one-smoothed unigram model from train counts, scored on test tokens 1..n-1 (of the first `limit`)."""
    logp = unigram_logprobs(train, vocab_size)
    if limit is None:  # every id of the split is predicted but the first: counts, never the ids themselves
        predicted = test.counts()[:vocab_size].copy()
        predicted[int(test.window(0, 1)[0])] -= 1
    else:
        predicted = np.bincount(test.window(0, min(limit, len(test)))[1:], minlength=vocab_size)[:vocab_size]
    return float(-(predicted @ logp)), int(predicted.sum())


def versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {"python": platform.python_version(), "torch": torch.__version__, "snakemake": version("snakemake"),
            "expanda": version("expanda"), "transformers": version("transformers")}


def evaluate(model: GPT, test: TokenStream, train: TokenStream | None, test_bytes: int | None, batch_eval: int,
             device: torch.device, bf16: bool, max_batches: int, context: int = 0, stride: int = 0) -> dict:
    """Loss, perplexity, bits per token and per byte of `model` on `test`; the unigram floor from `train`.

    Windows of `context` inputs (0: the model's seq_len) every `stride` tokens (0: disjoint windows, each
    prediction seeing 0 to context - 1 tokens before it); a shorter stride scores each window's last
    `stride` predictions, each with at least context - stride tokens before it, as baselines are scored.

    Bits per byte divide the total NLL in bits by the UTF-8 bytes of the test
    text (`test_bytes`, as shards.shard_split counts them); they are None when
    the bytes are unknown or `max_batches` > 0 scores only the first batches.
    Without `train` the unigram keys are None.
    """
    seq_len = context or model.cfg.seq_len
    limit = max_batches * batch_eval * seq_len + 1 if max_batches > 0 else None
    started = time.perf_counter()
    nll, count = stream_nll(model, test, seq_len, batch_eval, device, limit=limit, progress=True, bf16=bf16,
                            stride=stride or seq_len)
    seconds = time.perf_counter() - started
    uni = None
    if train is not None:
        uni, uni_count = unigram_nll(train, test, model.cfg.vocab_size, limit)
        assert uni_count == count, "model and unigram must score the same positions"
    loss = nll / count
    per_byte = test_bytes if test_bytes and limit is None else None
    return {"eval_tokens": count, "loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
            "bits_per_byte": None if per_byte is None else nll / math.log(2) / per_byte,
            "test_bytes": per_byte, "tokens_per_byte": None if per_byte is None else count / per_byte,
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


def evaluate_command(model_path: Path | None, hf: str | None, output: Path | None, name: str, shards: Path | None,
                     eval_corpus: Path | None, text: Path | None, train_corpus: Path | None,
                     vocab_path: Path | None, expect: dict, params: EvaluateParams, baseline: BaselineParams,
                     hardware: Hardware) -> dict:
    """`python -m gpt2 evaluate`: score a model.pt (or with `hf`, a transformers model), print the JSON report
    and write it to `output` atomically."""
    dev = resolve_device(hardware.device)
    set_threads(hardware.threads)
    if hf is not None:
        return _write(evaluate_hf(hf, name, _hf_text(shards, eval_corpus, text), params, baseline, dev,
                                  use_bf16(hardware.amp, dev)), output)
    model, state = checkpoint.load_model(model_path, dev)
    checkpoint.check_architecture(model.cfg, expect, model_path)
    bf16 = use_bf16(hardware.amp, dev)
    with tempfile.TemporaryDirectory() as tmp:
        test, train, test_bytes = _test_data(shards, eval_corpus, text, train_corpus, vocab_path, Path(tmp))
        if test.manifest["vocab_size"] != model.cfg.vocab_size:
            raise UserError(f"{model_path}: model vocabulary {model.cfg.vocab_size} != the test data's "
                            f"{test.manifest['vocab_size']}; pass the vocab.txt or tokenizer.json the model was "
                            "trained with")
        context, stride = windows_of(baseline, model.cfg.seq_len, str(model_path), half=False)
        # GPT-2's byte-level BPE gives the text back; WordPiece lowercases and drops spacing (bits per byte
        # then count bytes the model never had to tell apart)
        lossless = is_bpe(test.manifest.get("vocab", vocab_path or ""))
        numbers = evaluate(model, test, train, test_bytes, params.batch_eval, dev, bf16, params.max_batches,
                           context, stride)
    cfg = model.cfg
    report = {"model": name or Path(model_path).parent.name, "params": model.num_params(), "layers": cfg.layers,
              "heads": cfg.heads, "dims": cfg.dims, "seq_len": cfg.seq_len, "context": context, "stride": stride,
              "vocab_size": cfg.vocab_size, "tokenizer_round_trip": lossless,
              "train_steps": state["step"], "train_tokens": state["tokens"], **numbers,
              "checkpoint": str(model_path), "selected": state.get("selected", "final"),
              "valid_loss": state.get("valid_loss"), "seed": state["train_config"]["seed"], "device": str(dev),
              "precision": precision_name(bf16, dev), "versions": versions()}
    return _write(report, output)


def _write(report: dict, output: Path | None) -> dict:
    """Log a line, print the report as JSON and write it to `output` (atomically) when given."""
    if output is not None:
        with atomic_path(output) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    floor = "n/a" if report.get("unigram_perplexity") is None else f"{report['unigram_perplexity']:.1f}"
    per_byte = "n/a" if report["bits_per_byte"] is None else f"{report['bits_per_byte']:.4f}"
    print(f"{report['model']}: loss {report['loss']:.4f} nats, perplexity {report['perplexity']:.1f} "
          f"(unigram {floor}), {per_byte} bits/byte over {report['eval_tokens']:,} tokens, "
          f"{report['tokens_per_second']:,.0f} tokens/s", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return report


# --- any transformers causal LM on the same test text (--hf) -------------------------------------------


def strided_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int]]:
    """(start, scored) windows over a stream of n_tokens ids: the window's inputs are ids start ..
    start+context-1 (fewer at the end) and it scores its last `scored` predictions, so each of the
    n_tokens - 1 predictions is scored once, with at least context - stride ids before it (or all there
    are). stride == context gives `windows`' non-overlapping cut."""
    spans, scored_to = [], 1  # id 0 is context only
    for start in range(0, n_tokens - 1, stride):
        end = min(start + context + 1, n_tokens)  # one past the window's last target
        spans.append((start, end - scored_to))
        scored_to = end
        if end == n_tokens:
            break
    return spans


def _hf_text(shards: Path | None, eval_corpus: Path | None, text: Path | None) -> tuple[Path, int | None]:
    """The raw test text --hf scores and the bytes the shards counted for it (None for a --text file)."""
    if text is not None:
        return text, None
    manifest = shards or (eval_corpus if eval_corpus is not None and eval_corpus.suffix == ".json" else None)
    if manifest is None:
        raise UserError("--hf scores raw text: give --shards MANIFEST (its test/text.txt) or --text FILE, not "
                        "expanda's token lines")
    test = json.loads(Path(manifest).read_text())["splits"]["test"]
    source = Path(manifest).parent / "test" / "text.txt"
    if not source.is_file() or test.get("bytes") is None:
        raise UserError(f"{manifest}: its test split has no raw text (test/text.txt); rebuild the shards from a "
                        "corpus with corpus.raw.txt")
    return source, test["bytes"]


def hf_stream(tokenizer, docs: list[str], batch: int = 256) -> tuple[np.ndarray, list[int]]:
    """The ids `tokenizer` gives the documents, as GPT-2 read WebText: an end-of-text id, then each document
    followed by one, which also stands for the byte that ends the document. Every document id is predicted.

    Also the documents whose ids do not decode back to their text (a tokenizer that normalises, or maps
    bytes to an unknown token): its bits per byte would not count the bytes that were scored."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError(f"{tokenizer.name_or_path}: its tokenizer has no eos token to separate documents")
    ids, lossy = [eos], []
    for i in tqdm(range(0, len(docs), batch), desc="tokenize", unit_scale=batch, mininterval=5):
        encoded = tokenizer(docs[i: i + batch], add_special_tokens=False, verbose=False)["input_ids"]
        decoded = tokenizer.batch_decode(encoded, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for j, (doc, text) in enumerate(zip(encoded, decoded)):
            ids.extend(doc)
            ids.append(eos)
            if text != docs[i + j]:
                lossy.append(i + j)
    return np.asarray(ids, dtype=np.int64), lossy


def load_hf(name: str, device: torch.device):
    """(model, tokenizer) of a hub id or a local folder; never runs code from the hub (no trust_remote_code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).to(device)
    except (OSError, ValueError) as exc:
        where = "a local folder" if Path(name).exists() else "a hub id"
        raise UserError(f"--hf {name} ({where}) could not be loaded: {str(exc).splitlines()[0]} -- a hub id needs "
                        "the network once, or the model in the Hugging Face cache (HF_HOME)") from None
    return model.eval(), tokenizer


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
# What a causal LM and its tokenizer need; no pickled weights (*.bin) when safetensors exist, no code.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
SOURCE = "source.json"  # in a fetched folder: the hub id and revision it came from


def fetch_hf(hf: str, out: Path) -> None:
    """`python -m gpt2 fetch-hf`: a hub model's weights, config and tokenizer into `out`, with source.json naming
    the hub id and the revision; on a cluster this runs on the login node, so compute nodes need no network.
    Offline (HF_HUB_OFFLINE=1) it copies the model from the Hugging Face cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if not HUB_ID.fullmatch(hf):
        raise UserError(f"--hf {hf!r} is not a hub id (name or owner/name: letters, digits, . _ -)")
    try:
        snapshot = Path(snapshot_download(hf, allow_patterns=HUB_FILES))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise UserError(f"--hf {hf} could not be fetched: {str(exc).splitlines()[0][:160]} -- it needs the network "
                        "(run it on a login node), or the model in the Hugging Face cache (HF_HOME)") from None
    if not any(snapshot.glob("*.safetensors")):
        raise UserError(f"--hf {hf}: the hub has no *.safetensors weights for it (pickled *.bin weights are never "
                        "fetched: they can run code); convert the model, or score a local folder")
    with atomic_dir(out, "fetch-hf") as staging:
        for path in sorted(snapshot.rglob("*")):
            # offline, the cache's whole snapshot comes back: keep HUB_FILES; its files link to blobs: copy bytes
            if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in HUB_FILES):
                (staging / path.relative_to(snapshot)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, staging / path.relative_to(snapshot))
        (staging / SOURCE).write_text(json.dumps({"hf": hf, "revision": snapshot.name}, indent=2) + "\n")
    print(f"fetched {hf} (revision {snapshot.name}) into {out}", file=sys.stderr)


def hf_source(name: str, model) -> tuple[str, str | None]:
    """(hub id, revision) a model came from: a fetch-hf folder's source.json, else what transformers knows."""
    source = Path(name) / SOURCE
    if source.is_file():
        saved = json.loads(source.read_text())
        return saved["hf"], saved["revision"]
    return name, getattr(model.config, "_commit_hash", None)


def context_of(model) -> int:
    """The model's context length, from its config."""
    for key in ("n_positions", "max_position_embeddings"):
        if getattr(model.config, key, None):
            return int(getattr(model.config, key))
    raise UserError(f"{model.config.name_or_path}: its config names no context length (n_positions)")


@torch.inference_mode()
def hf_nll(model, ids: np.ndarray, context: int, stride: int, batch: int, device: torch.device, bf16: bool,
           limit: int | None = None, chunk_tokens: int = 4096) -> tuple[float, int]:
    """(sum of NLL in nats, scored predictions) of `model` over the stream, strided windows of `context` inputs.

    The last hidden states go through the output layer `chunk_tokens` positions at a time, as GPT.nll
    does, so memory stays bounded whatever the batch (gpt2-xl: 1,024 x 50,257 fp32 logits are 206 MB
    a window)."""
    head = model.get_output_embeddings()
    # Models that scale or cap their logits after the output layer (Gemma 2, Cohere, Granite) get the whole
    # forward (its logits_to_keep still bounds them to the scored positions).
    plain_head = not any(getattr(model.config, key, None) for key in ("final_logit_softcapping", "logit_scale",
                                                               "logits_scaling"))

    def nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not plain_head:
            logits = model(x, logits_to_keep=y.shape[1]).logits  # (B, S, vocab)
            return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        hidden = model.base_model(x).last_hidden_state[:, -y.shape[1]:]  # (B, S, D)
        return chunked_nll(hidden.flatten(0, 1), y.flatten(), head, chunk_tokens)

    return _strided_nll(nll, lambda start, length: ids[start: start + length], len(ids), context, stride, batch,
                        device, bf16, True, model, limit)


def _strided_nll(nll: Callable, window: Callable, n_tokens: int, context: int, stride: int, batch: int,
                 device: torch.device, bf16: bool, progress: bool, model: torch.nn.Module,
                 limit: int | None = None) -> tuple[float, int]:
    """Sum of `nll(inputs, the scored targets)` over strided_windows, batched by window shape, and the count."""
    spans = [(start, min(context, n_tokens - 1 - start), scored)
             for start, scored in strided_windows(n_tokens, context, stride)[:limit]]
    groups: list[list[tuple[int, int, int]]] = []  # runs of windows of one shape (all but the last two or so)
    for span in spans:
        if groups and len(groups[-1]) < batch and groups[-1][0][1:] == span[1:]:
            groups[-1].append(span)
        else:
            groups.append([span])
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for group in tqdm(groups, desc="evaluate", disable=not progress, mininterval=5):
        _, length, scored = group[0]
        rows = np.stack([np.asarray(window(start, length + 1), dtype=np.int64) for start, _, _ in group])
        ids = torch.from_numpy(rows).to(device)
        with autocast(device, bf16):
            total += float(nll(ids[:, :-1], ids[:, -scored:]))
        count += len(group) * scored
    model.train(was_training)
    return total, count


def windows_of(baseline: BaselineParams, model_context: int, name: str, half: bool) -> tuple[int, int]:
    """(context, stride) of the scoring windows: --context (0: the model's), --stride (0: half the context for
    --hf, the whole context -- disjoint windows -- for a model.pt)."""
    context = baseline.context or model_context
    if context > model_context:
        raise UserError(f"--context {context} is more than {name}'s context of {model_context} tokens")
    stride = baseline.stride or (max(1, context // 2) if half else context)
    if stride > context:
        raise UserError(f"--stride {stride} is more than the scoring context of {context} tokens")
    return context, stride


def evaluate_hf(name: str, label: str, text: tuple[Path, int | None], params: EvaluateParams,
                baseline: BaselineParams, device: torch.device, bf16: bool) -> dict:
    """The report of a transformers causal LM on the test text: the keys of ours where they apply."""
    source, shard_bytes = text
    with open(source, encoding="utf-8") as fh:
        docs = [" ".join(lines) for lines in text_documents(fh)]
    n_bytes = sum(len(doc.encode("utf-8")) + 1 for doc in docs)  # + the byte each document's end stands for
    if shard_bytes is not None and n_bytes != shard_bytes:
        raise UserError(f"{source} holds {n_bytes:,} bytes but the manifest counted {shard_bytes:,}; the shards "
                        "were changed after they were made: rebuild them")
    model, tokenizer = load_hf(name, device)
    ids, lossy = hf_stream(tokenizer, docs)
    if lossy:
        print(f"warning: {name}'s tokenizer does not give back the text of {len(lossy):,} of {len(docs):,} test "
              f"documents (e.g. document {lossy[0]}): it normalises or drops bytes, so its bits per byte count bytes "
              "it never had to predict; the report flags it (tokenizer_round_trip false)", file=sys.stderr)
    model_context = context_of(model)
    context, stride = windows_of(baseline, model_context, name, half=True)
    limit = params.max_batches * params.batch_eval if params.max_batches > 0 else None
    started = time.perf_counter()
    nll, count = hf_nll(model, ids, context, stride, params.batch_eval, device, bf16, limit)
    seconds = time.perf_counter() - started
    loss, whole = nll / count, limit is None
    total = sum(p.numel() for p in model.parameters())
    positions = getattr(model.base_model, "wpe", None)  # GPT-2's learned positions; rotary models have none
    embedding = model.get_input_embeddings().weight.numel() + (positions.weight.numel() if positions else 0)
    hub_id, revision = hf_source(name, model)
    return {"model": label or Path(hub_id).name, "hf": hub_id, "revision": revision,
            "params": {"non_embedding": total - embedding, "total": total}, "seq_len": model_context, "stride": stride,
            "vocab_size": len(tokenizer), "eval_tokens": count, "loss": loss, "perplexity": math.exp(loss),
            "bits_per_token": loss / math.log(2), "bits_per_byte": nll / math.log(2) / n_bytes if whole else None,
            "test_bytes": n_bytes if whole else None, "tokens_per_byte": count / n_bytes if whole else None,
            "test_documents": len(docs), "tokenizer_round_trip": not lossy, "round_trip_failures": len(lossy),
            "context": context,
            "train_tokens": None, "source": str(source), "device": str(device),
            "precision": precision_name(bf16, device), "versions": versions(), "tokens_per_second": count / seconds}
