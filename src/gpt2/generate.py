"""Text in, text out: expanda's WordPiece tokenizer around the model's sampler."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from gpt2.corpus import SPECIALS
from gpt2.model import GPT


def load_tokenizer(vocab_path: str | Path) -> Tokenizer:
    """The tokenizer expanda built the corpus with: BERT normalizer and pre-tokenizer, `##` WordPiece."""
    tokenizer = Tokenizer(models.WordPiece.from_file(str(vocab_path), unk_token=SPECIALS[0]))
    tokenizer.normalizer = BertNormalizer(strip_accents=False)
    tokenizer.pre_tokenizer = BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(list(SPECIALS))
    return tokenizer


def complete(model: GPT, tokenizer: Tokenizer, prompt: str, max_tokens: int = 40, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 0.85, seed: int = 0) -> str:
    """The prompt followed by sampled text, stopping at `</s>`; seeded, so it is reproducible."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt).ids or [tokenizer.token_to_id(SPECIALS[2])]
    eos = tokenizer.token_to_id(SPECIALS[2])
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    out = model.generate(torch.tensor([ids], device=device), max_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, eos_id=eos, generator=generator)
    new = [i for i in out[0, len(ids):].tolist() if i != eos]
    return tokenizer.decode(ids + new)
