"""A training run's optimizers and learning-rate schedule.

train.optimizer adamw is GPT-2's recipe: AdamW on every parameter. muon follows the speedrun
recipes (modded-nanogpt, nanochat): torch's Muon on the hidden 2-D matrices, with q, k and v
orthogonalised as three matrices, and AdamW, with its own lr, on the rest (the embeddings, which
the output layer shares, norms, biases). The architecture stays GPT-2's, so the export is the same.

train.schedule: linear warmup over warmup_ratio of the steps, then cosine decay, or
warmup-stable-decay (wsd: the peak until the last decay_ratio of the steps, then a linear decay);
the last step that runs takes lr x min_lr_ratio.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import fields

import torch
from torch import nn

from gpt2 import UserError
from gpt2.params import TrainParams

# The oldest torch this module runs on: torch.optim.Muon arrived in 2.9. pyproject.toml and envs/*.yaml
# declare the same floor (tests/test_workflow.py), and `make test-floor` runs the training tests on it.
TORCH_FLOOR = "2.9"


def _check_torch() -> None:
    """One line naming the fix where this torch lacks Muon, or changed the private hook SplitMuon extends."""
    muon = getattr(torch.optim, "Muon", None)
    if muon is None:
        raise UserError(f"torch {torch.__version__} has no torch.optim.Muon: this project needs torch >= "
                        f"{TORCH_FLOOR} (pip install 'torch>={TORCH_FLOOR}')")
    hook = list(inspect.signature(getattr(muon, "_init_group", lambda: None)).parameters)
    if hook != ["self", "group", "params_with_grad", "grads", "muon_momentum_bufs"]:
        raise UserError(f"torch {torch.__version__} changed Muon's private _init_group({', '.join(hook)}), which "
                        "gpt2.optim.SplitMuon extends; use a torch from 2.9 to 2.14 (the range pyproject.toml "
                        "allows) or update SplitMuon")


_check_torch()


def lr_factor(step: int, params: TrainParams, start: int = 0) -> float:
    """The peak lr's multiplier for 0-based `step`: warmup towards 1, the schedule, and min_lr_ratio at the
    last step that runs (steps - 1).

    Warmup's steps all run below the peak ((i + 1) / (warmup + 1)), the first at the peak follows them.
    `start` > 0 is where an extended run's added steps begin: their warmup starts from min_lr_ratio,
    where the finished run left off.
    """
    low, end = (params.min_lr_ratio if start else 0.0), params.min_lr_ratio
    step, last = step - start, params.steps - start - 1
    warmup = warmup_steps(params.warmup_ratio, last + 1)
    if step >= last:
        return end
    if step < warmup:
        return low + (1 - low) * (step + 1) / (warmup + 1)
    peak_until = max(warmup, last - decay_steps(params.decay_ratio, last + 1)) if params.schedule == "wsd" else warmup
    progress = max(step - peak_until, 0) / (last - peak_until)  # 0 at the peak's last step, 1 at `last`
    if params.schedule == "wsd":
        return 1 - (1 - end) * progress
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_steps(warmup_ratio: float, span: int) -> int:
    """Warmup steps (below the peak) of a schedule over `span` steps: warmup_ratio of them, rounded, at least
    one when warmup_ratio > 0, and never the last step, which takes the end lr."""
    if warmup_ratio == 0:
        return 0
    return min(max(1, round(warmup_ratio * span)), span - 1)


def decay_steps(decay_ratio: float, span: int) -> int:
    """wsd: the steps after the peak's last, down to the end lr at the last step: decay_ratio of them, >= 1."""
    return max(1, round(decay_ratio * span))


def hidden_matrices(model: nn.Module) -> dict[int, str]:
    """The blocks' linear weights, by id: decayed by AdamW, orthogonalised by Muon, "qkv" for the fused q, k, v
    projection (three matrices), else "matrix". Chosen by module type, not by name, so a torch.compile'd
    (`_orig_mod.`) or DDP-wrapped (`module.`) model splits the same; the embeddings (which the output
    layer shares), norms and biases are not hidden matrices."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    qkv = {id(m.qkv.weight) for m in model.modules() if hasattr(m, "qkv")}
    return {id(m.weight): "qkv" if id(m.weight) in qkv else "matrix"
            for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) not in embeddings}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's groups: decay the hidden matrices only; norms, biases and embeddings are left alone."""
    hidden = hidden_matrices(model)
    decay, plain = [], []
    for p in model.parameters():
        (decay if id(p) in hidden else plain).append(p)
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
                p.add_(update, alpha=-adjusted_lr(group["lr"], group["adjust_lr_fn"], p.shape))
        return None


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's lr for a (rows, cols) matrix, by torch's two rules: "original" (None) scales by sqrt(max(1,
    rows / cols)), "match_rms_adamw" by 0.2 sqrt(max(rows, cols)) (an update of AdamW's RMS)."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return lr * max(1.0, rows / cols) ** 0.5
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * max(rows, cols) ** 0.5
    raise ValueError(f"Muon's adjust_lr_fn {adjust_lr_fn!r} is not one of None, 'original', 'match_rms_adamw'")


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


def build_optimizer(model: nn.Module, params: TrainParams, fused: bool, bf16: bool = True) -> torch.optim.Optimizer:
    """AdamW over every parameter, or Muon (hidden matrices) with AdamW (the rest); each group has its own lr.

    bf16: the device multiplies bf16 natively, where Muon's orthogonalisation runs in it (else in fp32)."""
    adamw = dict(betas=(params.beta1, params.beta2), fused=fused)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(param_groups(model, params.weight_decay), lr=params.lr, **adamw)
    hidden = hidden_matrices(model)
    buckets: dict[str, list] = {"qkv": [], "matrix": [], "rest": []}
    for p in model.parameters():
        buckets[hidden.get(id(p), "rest")].append(p)
    muon = SplitMuon([{"params": buckets["qkv"], "split": 3}, {"params": buckets["matrix"], "split": 1}],
                     lr=params.muon_lr, momentum=params.muon_momentum, weight_decay=params.muon_weight_decay,
                     bf16=bf16)
    return Optimizers(muon, torch.optim.AdamW([{"params": buckets["rest"], "weight_decay": 0.0}], lr=params.lr,
                                              **adamw))


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float | None]:
    """The lrs the next step uses: train.lr's (AdamW's group; with muon, the embeddings, norms and biases) and
    train.muon_lr's (None under adamw)."""
    if isinstance(optimizer, Optimizers):
        muon, adamw = optimizer.parts
        return {"lr": adamw.param_groups[0]["lr"], "muon_lr": muon.param_groups[0]["lr"]}
    return {"lr": optimizer.param_groups[0]["lr"], "muon_lr": None}


# What each optimizer (and cosine) leaves unused: a key set away from its default there does nothing.
IDLE = {"muon": ("weight_decay",), "adamw": ("muon_lr", "muon_momentum", "muon_weight_decay")}
MOVES = {"weight_decay": "muon_weight_decay decays the blocks' 2-D weights under muon",
         "muon_lr": "train.lr moves every weight under adamw", "muon_momentum": "adamw has beta1 and beta2",
         "muon_weight_decay": "train.weight_decay decays the 2-D weights under adamw",
         "decay_ratio": "wsd's decay; cosine decays from the peak on"}


def idle_settings(params: TrainParams) -> list[str]:
    """Warnings for the settings that were set (differ from their defaults) but the chosen optimizer or
    schedule ignores."""
    defaults = {f.name: f.default for f in fields(TrainParams)}
    idle = [(key, f"train.optimizer {params.optimizer}") for key in IDLE[params.optimizer]]
    idle += [("decay_ratio", "train.schedule cosine")] if params.schedule == "cosine" else []
    return [f"warning: train.{key} = {getattr(params, key):g} has no effect with {where} ({MOVES[key]})"
            for key, where in idle if getattr(params, key) != defaults[key]]
