"""Text in, text out: the corpus's tokenizer (WordPiece or byte-level BPE) around the model's sampler."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import torch

from gpt2 import UserError, checkpoint
from gpt2.device import resolve_device
from gpt2.model import GPT
from gpt2.params import Hardware, SampleParams
from gpt2.vocab import load_tokenizer, tokenizer_eos_id


def complete(model: GPT, tokenizer, prompt: str, sampling: SampleParams, seed: int) -> str:
    """The prompt followed by sampled text, stopping at the end of a document; seeded, so it is reproducible.
    Decoded as the tokenizer decodes: exactly (BPE), or lowercased (WordPiece)."""
    device = next(model.parameters()).device
    eos = tokenizer_eos_id(tokenizer)
    ids = tokenizer.encode(prompt).ids or [eos]
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    out = model.generate(torch.tensor([ids], device=device), sampling.max_tokens, temperature=sampling.temperature,
                         top_k=sampling.top_k, top_p=sampling.top_p, eos_id=eos, generator=generator)
    new = [i for i in out[0, len(ids):].tolist() if i != eos]
    return tokenizer.decode(ids + new)


def _typed_prompts() -> Iterator[str]:
    """Prompts typed at a terminal (or piped in), one a line, until `exit`, `quit` or the end of input
    (Ctrl-D); an empty line asks again."""
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input(">> ") if interactive else sys.stdin.readline()
        except EOFError:  # Ctrl-D at the prompt
            return
        if not interactive and not line:
            return  # the end of piped input
        prompt = line.strip()
        if prompt in ("exit", "quit"):
            return
        if prompt:
            yield prompt


def generate_command(model_path: Path, vocab_path: Path, prompt: list[str] | None, expect: dict,
                     sampling: SampleParams, hardware: Hardware) -> None:
    """`python -m gpt2 generate`: complete each --prompt, or prompts read from stdin, one line each."""
    if not 0 < sampling.top_p <= 1:
        raise UserError(f"--nucleus_prob {sampling.top_p} must be in (0, 1]")
    model, _ = checkpoint.load_model(model_path, resolve_device(hardware.device))
    checkpoint.check_architecture(model.cfg, expect, model_path)
    tokenizer = load_tokenizer(vocab_path)
    for i, text in enumerate(prompt or _typed_prompts()):
        print(complete(model, tokenizer, text, sampling, sampling.seed + i), flush=True)
