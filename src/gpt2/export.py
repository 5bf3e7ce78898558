"""Export a trained model to a Hugging Face transformers directory.

`transformers.GPT2LMHeadModel.from_pretrained(DIR)` loads config.json +
model.safetensors; `AutoTokenizer.from_pretrained(DIR)` loads the corpus's
tokenizer as a fast tokenizer: the byte-level BPE with `<|endoftext|>` as its
bos and eos token (GPT-2's convention; it decodes exactly what it encoded), or
expanda's WordPiece with `<unk> <s> </s> <pad>`. The embedding is cut back to
the tokenizer's vocabulary: the rows our model pads it with (to a multiple of
64) never learn, and transformers' softmax would spread probability over them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml

from gpt2.checkpoint import load_model
from gpt2.files import atomic_dir
from gpt2.model import GPT, GPTConfig
from gpt2.optim import warmup_steps
from gpt2.vocab import BOS, ENDOFTEXT, EOS, PAD, UNK, is_bpe, load_tokenizer


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our parameter names and layouts -> GPT2LMHeadModel's (its Conv1D stores weights as in x out)."""
    ours = model.state_dict()
    out = {"transformer.wte.weight": ours["wte.weight"][: model.cfg.vocab_size].contiguous(), "transformer.wpe.weight": ours["wpe.weight"],
           "transformer.ln_f.weight": ours["ln_f.weight"], "transformer.ln_f.bias": ours["ln_f.bias"]}
    names = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
             "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
    for i in range(model.cfg.layers):
        for mine, theirs in names.items():
            for kind in ("weight", "bias"):
                tensor = ours[f"blocks.{i}.{mine}.{kind}"]
                if kind == "weight" and not mine.startswith("ln"):
                    tensor = tensor.t()
                out[f"transformer.h.{i}.{theirs}.{kind}"] = tensor.contiguous()
    return out


def special_tokens(tokenizer) -> dict[str, str]:
    """The tokenizer's special tokens, as transformers' tokenizers name them."""
    if tokenizer.token_to_id(ENDOFTEXT) is not None:  # BPE: GPT-2's one token for both ends
        return {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT}
    return {"unk_token": UNK, "bos_token": BOS, "eos_token": EOS, "pad_token": PAD}


def hf_config(cfg: GPTConfig, token_ids: dict[str, int] | None = None) -> dict:
    """transformers' GPT2Config keywords for our shape (and the special `token_ids`, e.g. eos_token_id): the
    one mapping of our config onto theirs."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.seq_len, "n_embd": cfg.dims, "n_layer": cfg.layers, "n_head": cfg.heads,
            "n_inner": cfg.mlp_ratio * cfg.dims, "activation_function": "gelu_new",  # tanh GELU, as ours
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": True, **(token_ids or {})}


def _front_matter(name: str, lang: str, report: dict | None) -> str:
    """The card's YAML header as the Hub reads it: language, license, pipeline and the test results."""
    meta = {"language": [lang], "license": "cc-by-sa-4.0", "library_name": "transformers",
            "pipeline_tag": "text-generation", "tags": ["gpt2", "wikipedia", "causal-lm"]}
    if report is not None:
        metrics = [{"type": "perplexity", "value": round(report["perplexity"], 2), "name": "Test perplexity"}]
        if report.get("bits_per_byte") is not None:
            metrics.append({"type": "bits_per_byte", "value": round(report["bits_per_byte"], 4),
                            "name": "Test bits per byte"})
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "text-generation", "name": "Causal language modeling"},
            "dataset": {"type": "wikipedia", "name": "Held-out Wikipedia articles"}, "metrics": metrics}]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


TOKENIZERS = {  # (name in the card, what it does) per kind
    "bpe": ("byte-level BPE", "The tokenizer is GPT-2's scheme, a cased byte-level BPE trained on the training "
            "articles: no unknown token, and `decode(encode(text)) == text` for any text. `<|endoftext|>` ends "
            "a document."),
    "wordpiece": ("WordPiece", "The tokenizer is expanda's WordPiece: it lowercases and splits like BERT, and "
                  "maps characters outside its alphabet to `<unk>`; decoded text is lowercased."),
}


def _warmup(train: dict) -> str:
    """The warmup of a saved train_config (warmup_steps before warmup_ratio replaced it)."""
    if "warmup_ratio" in train:
        return f"{warmup_steps(train['warmup_ratio'], train['steps'])} ({train['warmup_ratio']:g} of the steps)"
    return str(train["warmup_steps"])


# What benchmarks/bench_quality.py measured for the default recipe (docs/training.md, 2026-12-08).
MUON_WSD_GAIN = (" (on the project's quality benchmark, 4 layers x 256 on 819 k tokens with every lr tuned on "
                 "validation, this recipe reached GPT-2's AdamW + cosine final validation loss with 0.52x its "
                 "tokens)")


def _recipe(train: dict) -> str:
    """The optimizer and lr schedule of a saved train_config (runs before train.optimizer were AdamW, cosine)."""
    adamw = f"AdamW (lr {train['lr']:g}"
    if train.get("optimizer", "adamw") == "muon":
        optimizer = (f"Muon (lr {train['muon_lr']:g}, momentum {train['muon_momentum']:g}, weight decay "
                     f"{train['muon_weight_decay']:g}) on the blocks' 2-D weights, {adamw}) on the embeddings, "
                     "norms and biases")
    else:
        optimizer = f"{adamw}, weight decay {train['weight_decay']:g} on the blocks' 2-D weights)"
    warmup, floor = f"{_warmup(train)} warmup steps", f"{train['min_lr_ratio']:g} x the peak"
    if train.get("schedule", "cosine") == "wsd":
        measured = MUON_WSD_GAIN if train.get("optimizer") == "muon" else ""
        return (f"{optimizer}; {warmup}, the peak held, then a linear decay over the last "
                f"{train['decay_ratio']:.0%} of the steps to {floor}{measured}")
    return f"{optimizer}; {warmup}, then a cosine decay to {floor}"


def model_card(name: str, state: dict, model: GPT, dump: dict | None, report: dict | None, kind: str) -> str:
    """README.md of the exported folder: architecture, data, training budget, evaluation, usage; `kind` is
    the tokenizer's (bpe or wordpiece)."""
    cfg, train = model.cfg, state["train_config"]
    counts = model.num_params()
    tokenizer_name, tokenizer_text = TOKENIZERS[kind]
    lines = [_front_matter(name, (dump or {}).get("lang", "en"), report),
             f"# {name}: GPT-2 trained on Wikipedia", "",
             f"Trained and evaluated with the GPT-2-on-Wikipedia Snakemake workflow: a {tokenizer_name} vocabulary "
             "built from the training articles, a GPT-2 (pre-LayerNorm, learned positions, tied output), test "
             "articles never seen in training.", "", "## Architecture", "", "| | |", "|---|---|",
             f"| layers / heads / dims | {cfg.layers} / {cfg.heads} / {cfg.dims} |",
             f"| context | {cfg.seq_len} tokens |", f"| vocabulary | {cfg.vocab_size} {tokenizer_name} tokens |",
             f"| parameters | {counts['total']:,} ({counts['non_embedding']:,} without embeddings) |", ""]
    if dump is not None:
        lines += ["## Data", "", f"Wikipedia dump `{dump['wiki']}` {dump['date']}, language `{dump['lang']}`, "
                  f"{dump['articles']:,} articles; files:", ""]
        lines += [f"- `{name}` (sha1 `{sums['sha1']}`)" for name, sums in dump["files"].items()] + [""]
    lines += ["## Training", "", f"{state['step']:,} steps, {state['tokens']:,} tokens "
              f"({train['batch_tokens']:,} per step), {_recipe(train)}, seed {train['seed']}; this is the "
              f"{state.get('selected', 'final')} model of the run.", ""]
    if report is not None:
        lines += ["## Evaluation", "", f"On the held-out test articles ({report['eval_tokens']:,} predicted tokens):",
                  "", "| metric | value |", "|---|---|", f"| loss (nats/token) | {report['loss']:.4f} |",
                  f"| perplexity | {report['perplexity']:.1f} |"]
        if report.get("unigram_perplexity"):
            lines.append(f"| unigram perplexity (the floor) | {report['unigram_perplexity']:.1f} |")
        if report.get("bits_per_byte") is not None:
            lines.append(f"| bits per byte | {report['bits_per_byte']:.4f} |")
        lines.append("")
    lines += ["## Use", "", "```python", "from transformers import AutoTokenizer, GPT2LMHeadModel, pipeline", "",
              'model = GPT2LMHeadModel.from_pretrained("path/to/this/folder")',
              'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
              'generate = pipeline("text-generation", model="path/to/this/folder")', "```", "",
              f"{tokenizer_text} The model's `vocab_size` in config.json is the tokenizer's: its "
              "next-token distribution covers exactly the tokenizer's tokens.", ""]
    return "\n".join(lines)


def export_hf(model_path: Path, vocab_path: Path, out: Path, evaluation: Path | None,
              dump_info: Path | None) -> Path:
    """Write DIR with config.json, model.safetensors, tokenizer.json, its configs and a model card README.md."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    model, state = load_model(model_path, torch.device("cpu"))
    tokenizer = load_tokenizer(vocab_path)
    specials = special_tokens(tokenizer)
    ids = {f"{name}_id": tokenizer.token_to_id(token) for name, token in specials.items() if name != "unk_token"}
    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.cfg, ids)))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    # Only buffers HF recomputes (attention masks) and the tied lm_head may be absent.
    if unexpected or any(not (k.endswith(".attn.bias") or k.endswith(".masked_bias") or k == "lm_head.weight")
                         for k in missing):
        raise RuntimeError(f"weight mapping is off: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    with atomic_dir(out, "export") as staging:
        hf.save_pretrained(staging, safe_serialization=True)
        # No clean-up of spaces on decode: it would turn "a ." into "a." and break the round trip.
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **specials)
        fast.save_pretrained(staging)
        report = json.loads(Path(evaluation).read_text()) if evaluation else None
        dump = json.loads(Path(dump_info).read_text()) if dump_info else None
        name = report["model"] if report else Path(model_path).parent.name
        kind = "bpe" if is_bpe(vocab_path) else "wordpiece"
        (staging / "README.md").write_text(model_card(name, state, model, dump, report, kind))
        (staging / "gpt2_export.json").write_text(json.dumps(
            {"source": str(model_path), "vocab": str(vocab_path), "real_vocab_size": model.cfg.vocab_size},
            indent=2))
    print(f"exported {model_path} to {out}", file=sys.stderr)
    return Path(out)
