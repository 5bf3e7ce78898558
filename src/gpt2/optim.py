"""A training run's optimizers and learning-rate schedule.

train.optimizer adamw is GPT-2's recipe: AdamW on every parameter. muon follows the speedrun
recipes (modded-nanogpt, nanochat): torch's Muon on the hidden 2-D matrices, with q, k and v
orthogonalised as three matrices, and AdamW, with its own lr, on the rest (the embeddings, which
the output layer shares, norms, biases). The architecture stays GPT-2's, so the export is the same.

train.schedule: linear warmup over warmup_ratio of the steps, then cosine decay, or
warmup-stable-decay (wsd: the peak until the last decay_ratio of the steps, then a linear decay);
both end at lr x min_lr_ratio.
"""

from __future__ import annotations

import math

import torch

from gpt2.model import GPT
from gpt2.params import TrainParams


def lr_factor(step: int, params: TrainParams, start: int = 0) -> float:
    """The peak lr's multiplier at `step`: warmup to 1, then the schedule's decay to min_lr_ratio at the last step.

    `start` > 0 is where an extended run's added steps begin: their warmup
    starts from min_lr_ratio, where the finished run left off.
    """
    low, end = (params.min_lr_ratio if start else 0.0), params.min_lr_ratio
    step, span = step - start, params.steps - start
    warmup = warmup_steps(params, span)
    if step < warmup:
        return low + (1 - low) * (step + 1) / warmup
    if params.schedule == "wsd":
        decay_from = max(warmup, span - round(params.decay_ratio * span))
        progress = (step - decay_from) / max(1, span - decay_from)
        return 1 - (1 - end) * min(max(progress, 0.0), 1.0)
    progress = (step - warmup) / max(1, span - warmup)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def warmup_steps(params: TrainParams, span: int) -> int:
    """Warmup steps of a schedule over `span` steps: warmup_ratio of them, rounded."""
    return round(params.warmup_ratio * span)


def is_hidden_matrix(name: str, p: torch.nn.Parameter) -> bool:
    """The blocks' linear weights: decayed by AdamW, orthogonalised by Muon (embeddings, norms, biases are not)."""
    return p.dim() == 2 and not name.startswith(("wte", "wpe"))


def param_groups(model: GPT, weight_decay: float) -> list[dict]:
    """AdamW's groups: decay the hidden matrices only; norms, biases and embeddings are left alone."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if is_hidden_matrix(name, p) else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class SplitMuon(torch.optim.Muon):
    """torch's Muon, where a group's `split` = k orthogonalises each of a matrix's k row blocks on its own.

    The fused q, k, v projection (3D x D) is three D x D matrices: orthogonalising the block as one
    would couple their updates' scales. The momentum buffer stays one tensor per parameter (views
    are updated in place), so state_dict and resume are torch's own.

    torch runs Newton-Schulz in bf16, which CPUs without AVX512-BF16/AMX emulate: there a step took 41x
    (4 layers x 256) to 60x (GPT-2 small) longer than in fp32, so `bf16=False` computes the same update
    in fp32. Where bf16 is native it is 2.6-3.7x faster than fp32, and torch's step runs.
    """

    def __init__(self, params, *, bf16: bool = True, **kwargs):
        super().__init__(params, **kwargs)
        self.bf16 = bf16  # a property of the machine, not of the run: not in the state_dict

    def _init_group(self, group, params_with_grad, grads, muon_momentum_bufs) -> bool:
        has_complex = super()._init_group(group, params_with_grad, grads, muon_momentum_bufs)
        k = group["split"]
        if k > 1:
            for tensors in (params_with_grad, grads, muon_momentum_bufs):
                tensors[:] = [block for t in tensors for block in t.chunk(k)]
        return has_complex

    @torch.no_grad()
    def step(self, closure=None):
        if self.bf16:
            return super().step(closure)
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            for p, grad, buf in zip(params, grads, bufs):  # torch's update (nesterov momentum), in fp32
                buf.lerp_(grad, 1 - group["momentum"])
                update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * max(1.0, p.shape[0] / p.shape[1]) ** 0.5)
        return None


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """The quintic Newton-Schulz iteration torch's Muon uses, in g's dtype: singular values of g pushed to ~1."""
    a, b, c = coefficients
    wide = g.shape[0] <= g.shape[1]
    x = g if wide else g.T  # (rows <= cols): the Gram matrix is the smaller one
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


class Optimizers(torch.optim.Optimizer):
    """Several optimizers stepped as one, so that the loop, the schedule, the loss scaler and the checkpoint
    see a single optimizer: param_groups are the parts' own group dicts (a scheduler's lr reaches them)."""

    def __init__(self, *parts: torch.optim.Optimizer):
        self.parts = parts
        super().__init__([p for part in parts for g in part.param_groups for p in g["params"]], {})
        self.param_groups = [g for part in parts for g in part.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict) -> None:
        for part, saved in zip(self.parts, state_dict["parts"], strict=True):
            part.load_state_dict(saved)
        # torch's load_state_dict makes new group dicts: the schedule must set the lr of those.
        self.param_groups = [g for part in self.parts for g in part.param_groups]


def build_optimizer(model: GPT, params: TrainParams, fused: bool, bf16: bool = True) -> torch.optim.Optimizer:
    """AdamW over every parameter, or Muon (hidden matrices) with AdamW (the rest); each group has its own lr.

    bf16: the device multiplies bf16 natively, where Muon's orthogonalisation runs in it (else in fp32)."""
    adamw = dict(betas=(params.beta1, params.beta2), fused=fused)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(param_groups(model, params.weight_decay), lr=params.lr, **adamw)
    qkv, matrices, rest = [], [], []
    for name, p in model.named_parameters():
        bucket = rest if not is_hidden_matrix(name, p) else qkv if name.endswith("attn.qkv.weight") else matrices
        bucket.append(p)
    muon = SplitMuon([{"params": qkv, "split": 3}, {"params": matrices, "split": 1}], lr=params.muon_lr,
                     momentum=params.muon_momentum, weight_decay=params.muon_weight_decay, bf16=bf16)
    return Optimizers(muon, torch.optim.AdamW([{"params": rest, "weight_decay": 0.0}], lr=params.lr, **adamw))
