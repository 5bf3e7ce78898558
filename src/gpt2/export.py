"""Export a trained model to a Hugging Face transformers directory.

`transformers.GPT2LMHeadModel.from_pretrained(DIR)` loads config.json +
model.safetensors; `PreTrainedTokenizerFast.from_pretrained(DIR)` loads the
WordPiece tokenizer expanda trained, with `<unk> <s> </s> <pad>` as its
special tokens. The embedding keeps this project's padding to a multiple of
64 rows (HF's vocab_size is the padded size); ids past the real vocabulary are
never produced by the tokenizer.
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
from gpt2.vocab import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, UNK, load_tokenizer


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our parameter names and layouts -> GPT2LMHeadModel's (its Conv1D stores weights as in x out)."""
    ours = model.state_dict()
    out = {"transformer.wte.weight": ours["wte.weight"], "transformer.wpe.weight": ours["wpe.weight"],
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


def hf_config(cfg: GPTConfig) -> dict:
    """transformers' GPT2Config keywords for our shape: the one mapping of our config onto theirs."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.padded_vocab,
            "n_positions": cfg.seq_len, "n_embd": cfg.dims, "n_layer": cfg.layers, "n_head": cfg.heads,
            "n_inner": cfg.mlp_ratio * cfg.dims, "activation_function": "gelu_new",  # tanh GELU, as ours
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": True,
            "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}


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


def model_card(name: str, state: dict, model: GPT, dump: dict | None, report: dict | None) -> str:
    """README.md of the exported folder: architecture, data, training budget, evaluation, usage."""
    cfg, train = model.cfg, state["train_config"]
    counts = model.num_params()
    lines = [_front_matter(name, (dump or {}).get("lang", "en"), report),
             f"# {name}: GPT-2 trained on Wikipedia", "",
             "Trained and evaluated with the GPT-2-on-Wikipedia Snakemake workflow: a WordPiece vocabulary built by "
             "expanda, a GPT-2 (pre-LayerNorm, learned positions, tied output), test articles never seen in "
             "training.", "", "## Architecture", "", "| | |", "|---|---|",
             f"| layers / heads / dims | {cfg.layers} / {cfg.heads} / {cfg.dims} |",
             f"| context | {cfg.seq_len} tokens |", f"| vocabulary | {cfg.vocab_size} WordPiece tokens |",
             f"| parameters | {counts['total']:,} ({counts['non_embedding']:,} without embeddings) |", ""]
    if dump is not None:
        lines += ["## Data", "", f"Wikipedia dump `{dump['wiki']}` {dump['date']}, language `{dump['lang']}`, "
                  f"{dump['articles']:,} articles; files:", ""]
        lines += [f"- `{name}` (sha1 `{sums['sha1']}`)" for name, sums in dump["files"].items()] + [""]
    lines += ["## Training", "", f"{state['step']:,} steps, {state['tokens']:,} tokens "
              f"({train['batch_tokens']:,} per step), AdamW lr {train['lr']:g} with {train['warmup_steps']} warmup "
              f"steps and cosine decay to {train['lr'] * train['min_lr_ratio']:g}, weight decay "
              f"{train['weight_decay']:g}, seed {train['seed']}; this is the {state.get('selected', 'final')} "
              "model of the run.", ""]
    if report is not None:
        lines += ["## Evaluation", "", f"On the held-out test articles ({report['eval_tokens']:,} predicted tokens):",
                  "", "| metric | value |", "|---|---|", f"| loss (nats/token) | {report['loss']:.4f} |",
                  f"| perplexity | {report['perplexity']:.1f} |"]
        if report.get("unigram_perplexity"):
            lines.append(f"| unigram perplexity (the floor) | {report['unigram_perplexity']:.1f} |")
        if report.get("bits_per_byte") is not None:
            lines.append(f"| bits per byte | {report['bits_per_byte']:.4f} |")
        lines.append("")
    lines += ["## Use", "", "```python", "from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast", "",
              'model = GPT2LMHeadModel.from_pretrained("path/to/this/folder")',
              'tokenizer = PreTrainedTokenizerFast.from_pretrained("path/to/this/folder")', "```", "",
              "The tokenizer lowercases and splits like BERT; its `vocab_size` in config.json is padded to a "
              "multiple of 64 (ids past the real vocabulary are never produced).", ""]
    return "\n".join(lines)


def export_hf(model_path: Path, vocab_path: Path, out: Path, evaluation: Path | None,
              dump_info: Path | None) -> Path:
    """Write DIR with config.json, model.safetensors, tokenizer.json, its configs and a model card README.md."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    model, state = load_model(model_path, torch.device("cpu"))
    tokenizer = load_tokenizer(vocab_path)
    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.cfg)))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    # Only buffers HF recomputes (attention masks) and the tied lm_head may be absent.
    if unexpected or any(not (k.endswith(".attn.bias") or k.endswith(".masked_bias") or k == "lm_head.weight")
                         for k in missing):
        raise RuntimeError(f"weight mapping is off: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    with atomic_dir(out, "export") as staging:
        hf.save_pretrained(staging, safe_serialization=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                                       pad_token=PAD)
        fast.save_pretrained(staging)
        report = json.loads(Path(evaluation).read_text()) if evaluation else None
        dump = json.loads(Path(dump_info).read_text()) if dump_info else None
        name = report["model"] if report else Path(model_path).parent.name
        (staging / "README.md").write_text(model_card(name, state, model, dump, report))
        (staging / "gpt2_export.json").write_text(json.dumps(
            {"source": str(model_path), "vocab": str(vocab_path), "real_vocab_size": model.cfg.vocab_size},
            indent=2))
    print(f"exported {model_path} to {out}", file=sys.stderr)
    return Path(out)
