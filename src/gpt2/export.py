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

from gpt2.checkpoint import load_model
from gpt2.files import atomic_dir
from gpt2.model import GPT
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


def hf_config(model: GPT) -> dict:
    cfg = model.cfg
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.padded_vocab,
            "n_positions": cfg.seq_len, "n_embd": cfg.dims, "n_layer": cfg.layers, "n_head": cfg.heads,
            "n_inner": cfg.rate * cfg.dims, "activation_function": "gelu_new",  # tanh GELU, as ours
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": True,
            "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}


def export_hf(model_path: Path, vocab_path: Path, out: Path) -> Path:
    """Write DIR with config.json, model.safetensors, tokenizer.json and its configs; atomic per directory."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    model, _ = load_model(model_path, torch.device("cpu"))
    tokenizer = load_tokenizer(vocab_path)
    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model)))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    # Only buffers HF recomputes (attention masks) and the tied lm_head may be absent.
    if unexpected or any(not (k.endswith(".attn.bias") or k.endswith(".masked_bias") or k == "lm_head.weight")
                         for k in missing):
        raise RuntimeError(f"weight mapping is off: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    with atomic_dir(out) as staging:
        hf.save_pretrained(staging, safe_serialization=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                                       pad_token=PAD)
        fast.save_pretrained(staging)
        (staging / "gpt2_export.json").write_text(json.dumps(
            {"source": str(model_path), "vocab": str(vocab_path), "real_vocab_size": model.cfg.vocab_size},
            indent=2))
    print(f"exported {model_path} to {out}", file=sys.stderr)
    return Path(out)
