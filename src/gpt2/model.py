"""GPT-2 in one file: pre-LayerNorm transformer blocks, learned positions, tied output.

Attention goes through `scaled_dot_product_attention` (flash kernels on GPU);
a per-layer KV cache makes generation linear in the number of new tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GPTConfig:
    """The shape of one model; the settings behind it are declared in params.py (Architecture, TrainParams)."""

    vocab_size: int
    seq_len: int
    layers: int
    heads: int
    dims: int
    mlp_ratio: int  # MLP hidden size = mlp_ratio * dims
    dropout: float
    pad_vocab_to: int = 64  # embedding rows padded for fast matmuls; logits are sliced back

    def __post_init__(self):
        if self.dims % self.heads:
            raise ValueError(f"dims ({self.dims}) must be divisible by heads ({self.heads})")

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "GPTConfig":
        """The shape a checkpoint saved; checkpoints written before the rename name mlp_ratio `rate`."""
        saved = dict(saved)
        if "rate" in saved:
            saved["mlp_ratio"] = saved.pop("rate")
        return cls(**saved)


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.dims, 3 * cfg.dims)  # one fused projection for q, k, v
        self.proj = nn.Linear(cfg.dims, cfg.dims)
        self.proj.residual = True

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        mask, causal = None, past is None
        if past is not None and t > 1:  # new queries see the whole cache and the causal part of themselves
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.dims, cfg.mlp_ratio * cfg.dims)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.dims, cfg.dims)
        self.proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.dims), SelfAttention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.dims), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past=None):
        a, present = self.attn(self.ln1(x), past)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.ln2(x))), present


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab, cfg.dims)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.dims)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dims)
        self.grad_ckpt = False  # activation checkpointing: recompute blocks in backward
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        # GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * self.cfg.layers) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, 0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def init_output_prior(self, log_prior: torch.Tensor, scale: float = 30.0) -> None:
        """Make the untrained model predict `log_prior` (e.g. the train split's unigram log-probabilities):
        `output_prior` on its tied embedding and final norm; export to transformers is unchanged."""
        output_prior(self.wte.weight, self.ln_f.bias, log_prior, scale)

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), PaLM's estimate: 6 N + 12 L D T, where N counts
        every weight but the position embeddings (the token embedding is the output layer too)."""
        n = sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()
        return 6 * n + 12 * self.cfg.layers * self.cfg.dims * self.cfg.seq_len

    def num_params(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        embedding = self.wte.weight.numel() + self.wpe.weight.numel()
        return {"non_embedding": total - embedding, "total": total}

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, past: KVCache | None = None):
        """Logits over the real vocabulary; with `targets`, also the mean cross-entropy loss.

        With `past` (a KV cache), `idx` continues the cached sequence and the
        updated cache is returned as the third element.
        """
        x, presents = self.hidden(idx, past)
        logits = self.head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss, presents

    def nll(self, idx: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = 4096) -> torch.Tensor:
        """Summed NLL in nats of `targets` (B, S) after `idx` (B, T): the last S of the T predictions (S = T:
        all), for evaluation; strided windows score only their last tokens.

        The logits are made `chunk_tokens` positions at a time, so memory stays at chunk_tokens x vocab
        floats whatever the batch: a batch of 32 x 1024 at GPT-2's vocabulary would be 6.6 GB of fp32
        logits at once.
        """
        x, _ = self.hidden(idx)
        return chunked_nll(x[:, -targets.shape[1]:].flatten(0, 1), targets.flatten(), self.head, chunk_tokens)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of hidden states (..., D): final norm, then the tied embedding, padding rows sliced."""
        return F.linear(self.ln_f(x), self.wte.weight)[..., : self.cfg.vocab_size]

    def hidden(self, idx: torch.Tensor, past: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """The last block's output (B, T, D) for `idx` (B, T) (continuing `past`), and each layer's keys and values."""
        start = 0 if past is None else past[0][0].shape[2]
        t = idx.shape[1]
        if start + t > self.cfg.seq_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds seq_len {self.cfg.seq_len}")
        pos = torch.arange(start, start + t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        presents = []
        for i, block in enumerate(self.blocks):
            if self.grad_ckpt and self.training and past is None:
                x, kv = checkpoint(block, x, use_reentrant=False)
            else:
                x, kv = block(x, None if past is None else past[i])
            presents.append(kv)
        return x, presents

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, max_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, eos_id: int | None = None, generator: torch.Generator | None = None):
        """Sample up to `max_tokens` after `prompt` (1, T) with the KV cache; stop at `eos_id`."""
        max_tokens = min(max_tokens, self.cfg.seq_len - prompt.shape[1])
        logits, _, past = self(prompt)
        out = prompt
        for _ in range(max_tokens):
            nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            out = torch.cat([out, nxt], dim=1)
            if eos_id is not None and nxt.item() == eos_id:
                break
            if out.shape[1] >= self.cfg.seq_len:
                break
            logits, _, past = self(nxt, past=past)
        return out


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row: greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=generator)


def chunked_nll(hidden: torch.Tensor, targets: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                chunk_tokens: int = 4096) -> torch.Tensor:
    """Summed cross-entropy in nats of head(hidden) (N, D) -> (N, V) against targets (N,), the logits made
    chunk_tokens rows at a time (GPT.nll, and evaluate.hf_nll for transformers' models)."""
    total = torch.zeros((), device=hidden.device)
    for lo in range(0, len(hidden), chunk_tokens):
        logits = head(hidden[lo: lo + chunk_tokens])  # (chunk, V)
        total += F.cross_entropy(logits.float(), targets[lo: lo + chunk_tokens], reduction="sum")
    return total


@torch.no_grad()
def output_prior(wte: torch.Tensor, ln_f_bias: torch.Tensor, log_prior: torch.Tensor, scale: float = 30.0) -> None:
    """Set a GPT-2's tied token embedding (V, D) and final LayerNorm bias (D,) so that it predicts `log_prior`.

    GPT-2 has no output bias, so the prior goes where the architecture can hold it: the final
    LayerNorm's bias becomes `scale * u` for a random unit vector u, and each token's embedding's
    component along u becomes `(log p - mean) / scale`, so its logit gains log p - mean. The model
    then starts at the unigram loss instead of spending its first steps learning token frequencies.
    Any GPT-2 of this layout takes it (transformers' too: the quality benchmark gives its peer the same start).
    """
    u = torch.randn(wte.shape[1], generator=torch.Generator().manual_seed(0)).to(wte)
    u /= u.norm()
    centred = (log_prior - log_prior.mean()).to(wte)
    rows = wte[: len(centred)]
    rows -= (rows @ u)[:, None] * u  # the random init's own component along u would add noise x scale
    rows += (centred / scale)[:, None] * u
    ln_f_bias.copy_(scale * u)
