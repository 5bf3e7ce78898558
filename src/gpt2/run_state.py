"""A training run's fixed parts (settings, data, devices) and its state, with the rules for resuming it.

A checkpoint continues only the run that wrote it (the same trajectory settings and model shape);
raising `steps` on a finished run extends it: training continues from its last checkpoint, and the
added steps get a schedule of their own -- warmup from the min_lr the run ended at back to the peak
lr, then the schedule's decay to min_lr at the new last step (a warm restart).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from gpt2 import UserError, checkpoint
from gpt2.batches import Batches
from gpt2.device import half_dtype, native_bf16, peak_flops, use_bf16
from gpt2.distributed import Dist, restore_rng, rng_states
from gpt2.evaluate import unigram_logprobs
from gpt2.model import GPT, GPTConfig
from gpt2.optim import build_optimizer, idle_settings, lr_factor
from gpt2.params import TrainParams, accumulation, trajectory_keys
from gpt2.shards import TokenStream, check_vocab


@dataclass(frozen=True)
class Outputs:
    model: Path  # the final model, written once all steps are done
    checkpoints: Path  # checkpoints, the live metrics.csv and the best model so far

    @property
    def metrics(self) -> Path:
        return self.model.with_name("metrics.csv")

    @property
    def best(self) -> Path:
        return self.model.with_name("best.pt")

    @property
    def tensorboard(self) -> Path:
        return self.model.with_name("tensorboard")


@dataclass(frozen=True)
class Run:
    """What a training run reads and never changes: settings, data, devices."""

    params: TrainParams  # batch_tokens resolved (never 0)
    model_cfg: GPTConfig
    outputs: Outputs
    env: Dist
    batches: Batches
    valid: TokenStream  # periodic evaluation reads its first eval_tokens
    accum: int  # micro-batches per process per optimizer step
    bf16: bool
    peak_flops: float | None  # of the device in the precision used, for MFU


@dataclass
class TrainState:
    """What a checkpoint saves and a resume restores."""

    model: GPT
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    step: int = 0
    tokens: int = 0
    schedule_start: int = 0  # > 0: the step an extension's added steps start at (lr_factor)
    best_loss: float = math.inf  # the lowest validation loss so far (its model is checkpoints/best.pt)

    PARTS = ("model", "optimizer", "scheduler", "scaler")

    def to_dict(self, run: Run) -> dict:
        rng = rng_states(run.env)  # every rank takes part in the gather
        return {name: getattr(self, name).state_dict() for name in self.PARTS} | {
            "step": self.step, "tokens": self.tokens, "rng": rng, "model_config": run.model_cfg.to_dict(),
            "train_config": asdict(run.params), "schedule_start": self.schedule_start, "best_loss": self.best_loss}

    def load(self, saved: dict, env: Dist) -> None:
        for name in self.PARTS:
            if name in saved:
                getattr(self, name).load_state_dict(saved[name])
        self.step, self.tokens = saved["step"], saved["tokens"]
        self.schedule_start, self.best_loss = saved.get("schedule_start", 0), saved.get("best_loss", math.inf)
        restore_rng(saved["rng"], env)


def setup(shards: Path, outputs: Outputs, model_cfg: GPTConfig, params: TrainParams, env: Dist) -> Run:
    per_pass = params.micro_batch * model_cfg.seq_len * env.world
    params = replace(params, batch_tokens=params.batch_tokens or per_pass)
    accum = accumulation(params, env.world)
    check_vocab(shards)
    train_stream = TokenStream(shards, "train")
    if train_stream.manifest["vocab_size"] != model_cfg.vocab_size:
        raise UserError(f"model vocab_size {model_cfg.vocab_size} != shards' {train_stream.manifest['vocab_size']}")
    batches = Batches(train_stream, model_cfg.seq_len, params.batch_tokens // model_cfg.seq_len, params.seed)
    outputs.checkpoints.mkdir(parents=True, exist_ok=True)
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = use_bf16(params.amp, env.device)
    peak, source = peak_flops(env.device, bf16)
    if env.main:
        for warning in idle_settings(params):
            print(warning, file=sys.stderr)
        print(f"MFU against {'n/a' if peak is None else f'{peak / 1e12:,.3f} TFLOP/s'} ({source})", file=sys.stderr)
    return Run(params, model_cfg, outputs, env, batches, TokenStream(shards, "valid"), accum, bf16, peak)


def data_budget(run: Run, params_count: int) -> str:
    """Epochs over the train split and tokens per parameter, with a warning past train.max_epochs."""
    p, tokens = run.params, run.params.steps * run.params.batch_tokens
    epochs = tokens / len(run.batches.stream)
    line = (f"{p.steps:,} steps x {p.batch_tokens:,} tokens = {tokens:,} tokens: {epochs:.2f} epochs over the "
            f"{len(run.batches.stream):,}-token train split, {tokens / params_count:.3g} tokens per parameter")
    if epochs > p.max_epochs:
        line += (f"\nwarning: the run reads the train split {epochs:.1f} times (more than train.max_epochs = "
                 f"{p.max_epochs:g}): it will memorise rather than generalise; use more data (more dump "
                 "parts) or fewer steps")
    return line


def build_state(run: Run) -> TrainState:
    """A fresh model (seeded) with its optimizer, lr schedule and loss scaler."""
    p, cuda = run.params, run.env.device.type == "cuda"
    torch.manual_seed(p.seed)
    with torch.device(run.env.device):  # built where it trains: no host copy of the weights per process
        model = GPT(run.model_cfg)
    if p.init_prior:
        model.init_output_prior(torch.from_numpy(unigram_logprobs(run.batches.stream, run.model_cfg.vocab_size)))
    model.grad_ckpt = p.grad_ckpt
    optimizer = build_optimizer(model, p, fused=cuda, bf16=native_bf16(run.env.device))
    # fp16 (GPUs without bf16) needs loss scaling; disabled, the scaler passes everything through.
    fp16 = run.bf16 and half_dtype(run.env.device) == torch.float16
    state = TrainState(model, optimizer, None, torch.amp.GradScaler(run.env.device.type, enabled=fp16))
    # The schedule reads schedule_start when it is called, so a resume that extends the run moves it.
    state.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, p, state.schedule_start))
    return state


def resume(run: Run, state: TrainState, resume_from: Path | None, init_from: Path | None) -> None:
    """Continue from `resume_from` or the newest checkpoint; else start anew, from `init_from`'s weights if given."""
    saved = checkpoint.load_training(resume_from) if resume_from else checkpoint.load_latest(run.outputs.checkpoints)
    if saved is not None:
        extends = _check_same_run(saved, run)
        state.load(saved, run.env)
        if extends:
            state.schedule_start = saved["step"]
            for group, base in zip(state.optimizer.param_groups, state.scheduler.base_lrs):
                group["lr"] = base * lr_factor(state.step, run.params, state.schedule_start)
            print(f"extending the finished {saved['step']}-step run to {run.params.steps} steps: warmup from "
                  f"min_lr back to lr, then {run.params.schedule} to min_lr", file=sys.stderr)
        return
    if init_from is not None:
        pretrained, _ = checkpoint.load_model(init_from, torch.device("cpu"), "--from_pretrained")
        if pretrained.cfg != run.model_cfg:
            raise UserError(f"--from_pretrained {init_from}: its architecture {pretrained.cfg.to_dict()} differs "
                            f"from the flags' {run.model_cfg.to_dict()}")
        state.model.load_state_dict(pretrained.state_dict())
        print(f"initialised from {init_from}", file=sys.stderr)
    torch.manual_seed(run.params.seed + run.env.rank)  # dropout masks differ per rank


def _check_same_run(saved: dict, run: Run) -> bool:
    """The checkpoint continues this run; True when it is a finished run that more steps extend."""
    before, steps = saved["train_config"]["steps"], run.params.steps
    diffs = [k for k in trajectory_keys() if k != "steps" and saved["train_config"].get(k) != getattr(run.params, k)]
    shape = GPTConfig.from_dict(saved["model_config"]).to_dict()
    diffs += [k for k, v in run.model_cfg.to_dict().items() if shape[k] != v]
    if diffs:
        raise UserError(f"checkpoints in {run.outputs.checkpoints} come from a run with other {', '.join(diffs)}; "
                        "restore those settings to resume, or delete the folder to start over")
    if steps == before:
        return False
    if saved["step"] < before:
        raise UserError(f"the checkpoint in {run.outputs.checkpoints} is step {saved['step']} of an unfinished "
                        f"{before}-step run: finish it with train.steps = {before} before changing the steps")
    if steps < before:
        raise UserError(f"train.steps = {steps} is below the {before} steps the run in {run.outputs.checkpoints} "
                        "already made; raise it to extend the run, or delete the folder to start over")
    return True
