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
import shutil
import sys
from pathlib import Path

import torch

from gpt2.corpus import SPECIALS
from gpt2.evaluate import load_model
from gpt2.generate import load_tokenizer
from gpt2.model import GPT


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


def hf_config(model: GPT, eos_id: int, bos_id: int, pad_id: int) -> dict:
    cfg = model.cfg
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.padded_vocab,
            "n_positions": cfg.seq_len, "n_embd": cfg.dims, "n_layer": cfg.layers, "n_head": cfg.heads,
            "n_inner": cfg.rate * cfg.dims, "activation_function": "gelu_new",  # tanh GELU, as ours
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": True,
            "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}


def export_hf(model_path: str | Path, vocab_path: str | Path, out: str | Path) -> Path:
    """Write DIR with config.json, model.safetensors, tokenizer.json and its configs; atomic per directory."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = Path(out)
    model, _ = load_model(model_path, torch.device("cpu"))
    tokenizer = load_tokenizer(vocab_path)
    unk, bos, eos, pad = (tokenizer.token_to_id(t) for t in SPECIALS)
    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model, eos, bos, pad)))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    # Only buffers HF recomputes (attention masks) and the tied lm_head may be absent.
    if unexpected or any(not (k.endswith(".attn.bias") or k.endswith(".masked_bias") or k == "lm_head.weight")
                         for k in missing):
        raise RuntimeError(f"weight mapping is off: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    hf.save_pretrained(staging, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=SPECIALS[0], bos_token=SPECIALS[1],
                                   eos_token=SPECIALS[2], pad_token=SPECIALS[3])
    fast.save_pretrained(staging)
    (staging / "gpt2_export.json").write_text(json.dumps(
        {"source": str(model_path), "vocab": str(vocab_path), "real_vocab_size": model.cfg.vocab_size}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"exported {model_path} to {out}", file=sys.stderr)
    return out
