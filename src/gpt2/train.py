"""Stage 4: training with exact resume, on CPU, one GPU, or many through torchrun DDP.

The data order is a pure function of the step: the train stream is cut into
sequences of seq_len + 1 tokens, each epoch visits them in a seeded
permutation, and optimizer step s consumes the next `batch_tokens / seq_len`
of them. A checkpoint therefore only needs the step to know its data position,
and a run with W processes and A accumulation steps sees exactly the same
global batches as a single process with W * A accumulation steps.

`train()` reads top to bottom: set-up, resume, then the loop of step,
log/evaluate, checkpoint.

Raising `steps` on a finished run extends it: training continues from its
last checkpoint, and the added steps get a schedule of their own -- warmup
from the min_lr the run ended at back to the peak lr, then cosine decay to
min_lr at the new last step (a warm restart).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gpt2 import UserError, checkpoint
from gpt2.device import autocast, half_dtype, peak_flops, resolve_device, set_threads, use_bf16
from gpt2.evaluate import stream_nll, unigram_logprobs
from gpt2.files import atomic_path, remove_stale_temps
from gpt2.launch import relaunch_under_torchrun, require_gpus
from gpt2.model import GPT, GPTConfig
from gpt2.params import Architecture, TrainParams, accumulation, trajectory_keys
from gpt2.shards import TokenStream, check_vocab, manifest_for

# tokens_per_second, mfu and data_wait are over the wall time since the previous row: evaluation,
# checkpoints and data loading included. data_wait is the share of it spent waiting for batches.
METRICS = ["step", "tokens", "train_loss", "eval_loss", "lr", "tokens_per_second", "grad_norm", "mfu", "data_wait"]


def lr_factor(step: int, params: TrainParams, start: int = 0) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at the last step.

    `start` > 0 is where an extended run's added steps begin: their warmup
    starts from min_lr_ratio, where the finished run left off.
    """
    low = params.min_lr_ratio if start else 0.0
    step -= start
    if step < params.warmup_steps:
        return low + (1 - low) * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.steps - start - params.warmup_steps)
    return params.min_lr_ratio + (1 - params.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Batches:
    """Sequence indices of global batch `step`, from seeded per-epoch permutations."""

    def __init__(self, stream: TokenStream, seq_len: int, per_step: int, seed: int):
        self.stream, self.seq_len, self.per_step, self.seed = stream, seq_len, per_step, seed
        self.count = (len(stream) - 1) // seq_len
        if self.count < 1:
            raise UserError(f"the train split has {len(stream)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self._epoch, self._perm = -1, None

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.count, generator=g)
        return self._perm

    def indices(self, step: int) -> list[int]:
        first = step * self.per_step
        return [int(self._order(i // self.count)[i % self.count]) for i in range(first, first + self.per_step)]

    def host(self, seqs: list[int], pin: bool) -> torch.Tensor:
        """Token ids (B, T + 1) of the sequences `seqs`, in page-locked memory when `pin` (fast async copies)."""
        rows = np.stack([self.stream.window(i * self.seq_len, self.seq_len + 1) for i in seqs]).astype(np.int64)
        ids = torch.from_numpy(rows)
        return ids.pin_memory() if pin else ids


class Prefetcher:
    """The micro-batches of the coming steps, built by a background thread.

    Each step ends in a host-device sync (the gradient norm is checked), so a
    batch gathered from the memmapped shards after it would leave the device
    idle; here it is ready (pinned for CUDA) before the step starts. Data order
    stays a pure function of the step: the thread only works ahead.
    """

    def __init__(self, batches: Batches, slices: list[slice], first: int, last: int, gpu: int | None,
                 depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.waited = 0.0  # seconds the training thread spent blocked in next()
        self._thread = threading.Thread(target=self._fill, args=(batches, slices, first, last, gpu), daemon=True)
        self._thread.start()

    def _fill(self, batches: Batches, slices: list[slice], first: int, last: int, gpu: int | None) -> None:
        """Batches of steps first..last-1, pinned for GPU `gpu` (an index; None: the CPU, no pinning)."""
        try:
            if gpu is not None:  # a new thread's current GPU is 0: pin under this rank's, not a context on GPU 0
                torch.cuda.set_device(gpu)
            for step in range(first, last):
                seqs = batches.indices(step)
                self._put([batches.host(seqs[part], gpu is not None) for part in slices])
        except BaseException as exc:  # raised again by next() in the training thread
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> list[torch.Tensor]:
        """This process's micro-batches of the next step, (B, T + 1) each, on the host."""
        asked = time.perf_counter()
        item = self._queue.get()
        self.waited += time.perf_counter() - asked
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def param_groups(model: GPT, weight_decay: float) -> list[dict]:
    """Decay matrices of linear layers only; norms, biases and embeddings are left alone."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 and not name.startswith(("wte", "wpe")) else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


# --- distributed -------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Single process, or torchrun's env:// rendezvous (NCCL on GPU, gloo on CPU)."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=dev)
    cuda = dev.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), world, torch.device(f"cuda:{local}" if cuda else "cpu"))


def all_mean(value: torch.Tensor, env: Dist) -> float:
    if env.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world
    return float(value)


def rng_states(env: Dist) -> list[torch.Tensor]:
    """Every rank's torch RNG state (dropout), gathered so rank 0 can checkpoint them."""
    mine = torch.get_rng_state() if env.device.type == "cpu" else torch.cuda.get_rng_state(env.device)
    if env.world == 1:
        return [mine]
    gathered: list = [None] * env.world
    dist.all_gather_object(gathered, mine)
    return gathered


def restore_rng(states: list[torch.Tensor], env: Dist) -> None:
    if len(states) != env.world:
        return  # a different world size: data order is still exact, dropout masks are not
    if env.device.type == "cpu":
        torch.set_rng_state(states[env.rank])
    else:
        torch.cuda.set_rng_state(states[env.rank], env.device)


def _maybe_no_sync(net, sync: bool):
    # DDP all-reduces gradients only on the last micro-batch of a step.
    return net.no_sync() if not sync and hasattr(net, "no_sync") else contextlib.nullcontext()


# --- metrics -------------------------------------------------------------------


class MetricsLog:
    """metrics.csv rows and TensorBoard scalars as training goes; on resume, steps past the checkpoint go."""

    SCALARS = {"train_loss": "loss/train", "eval_loss": "loss/valid", "lr": "lr", "tokens_per_second": "tokens_per_s",
               "grad_norm": "grad_norm", "mfu": "mfu", "data_wait": "data_wait"}

    def __init__(self, path: Path, tensorboard: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = path
        rows = []
        if resume_step and path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, METRICS)
            writer.writeheader()
            writer.writerows(rows)
        # purge_step drops the events a crashed or extended run wrote after its checkpoint.
        self.board = SummaryWriter(str(tensorboard), purge_step=resume_step + 1 if resume_step else None)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, METRICS).writerow(row)
        for key, tag in self.SCALARS.items():
            if row[key] != "":
                self.board.add_scalar(tag, float(row[key]), row["step"])
        self.board.flush()

    def close(self) -> None:
        self.board.close()


# --- a run and its state ---------------------------------------------------------


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
    """A fresh model (seeded) with its AdamW, warmup-cosine schedule and loss scaler."""
    p, cuda = run.params, run.env.device.type == "cuda"
    torch.manual_seed(p.seed)
    model = GPT(run.model_cfg)
    if p.init_prior:
        model.init_output_prior(torch.from_numpy(unigram_logprobs(run.batches.stream, run.model_cfg.vocab_size)))
    model = model.to(run.env.device)
    model.grad_ckpt = p.grad_ckpt
    optimizer = torch.optim.AdamW(param_groups(model, p.weight_decay), lr=p.lr, betas=(p.beta1, p.beta2),
                                  fused=cuda)
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
                  f"min_lr back to lr, then cosine to min_lr", file=sys.stderr)
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
    diffs += [k for k, v in run.model_cfg.to_dict().items() if saved["model_config"].get(k) != v]
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


def compiled(run: Run, model: GPT):
    """The module the loop calls: DDP-wrapped across processes, torch.compile'd when asked (auto: CUDA)."""
    net = DistributedDataParallel(model) if run.env.world > 1 else model
    if run.params.compile == "on" or (run.params.compile == "auto" and run.env.device.type == "cuda"):
        net = torch.compile(net)
    return net


# --- one step, one log row, one checkpoint -------------------------------------------


def micro_slices(run: Run) -> list[slice]:
    """Which of a step's sequences each of this process's micro-batches holds (ranks interleave)."""
    p, env = run.params, run.env
    return [slice(lo, lo + p.micro_batch) for lo in ((m * env.world + env.rank) * p.micro_batch
                                                      for m in range(run.accum))]


def train_step(run: Run, net, state: TrainState, micro_batches: list[torch.Tensor]) -> tuple[float, float, float]:
    """One optimizer step over this process's micro-batches: (mean loss, gradient norm, lr used)."""
    env, p = run.env, run.params
    loss_sum = torch.zeros((), device=env.device)
    for micro, host in enumerate(micro_batches):
        ids = host.to(env.device, non_blocking=True)
        x, y = ids[:, :-1], ids[:, 1:]  # (B, T) each
        with _maybe_no_sync(net, micro == run.accum - 1), autocast(env.device, run.bf16):
            _, loss, _ = net(x, y)
        state.scaler.scale(loss / run.accum).backward()
        loss_sum += loss.detach() / run.accum
    state.scaler.unscale_(state.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), p.grad_clip))
    train_loss = all_mean(loss_sum, env)
    # fp16 overflows give an infinite norm that the scaler handles by skipping the step.
    if not math.isfinite(train_loss) or not (math.isfinite(grad_norm) or state.scaler.is_enabled()):
        raise UserError(f"non-finite loss ({train_loss}) at step {state.step + 1}; the last good checkpoint in "
                        f"{run.outputs.checkpoints} is kept -- lower train.lr or check the data")
    lr = state.optimizer.param_groups[0]["lr"]
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step, state.tokens = state.step + 1, state.tokens + p.batch_tokens
    return train_loss, grad_norm, lr


class Meter:
    """Wall time, tokens, time spent waiting for batches and train losses from `start` on."""

    def __init__(self, state: TrainState, feed: Prefetcher, start: float | None = None):
        self.start = time.perf_counter() if start is None else start
        self.step, self.tokens, self.feed, self.waited = state.step, state.tokens, feed, feed.waited
        self.losses: list[float] = []

    def rate(self, state: TrainState, now: float) -> tuple[float, float]:
        """(tokens/s, share of the time spent waiting for batches) up to `now`."""
        seconds = now - self.start
        return (state.tokens - self.tokens) / seconds, (self.feed.waited - self.waited) / seconds


def mfu(run: Run, state: TrainState, tokens_per_second: float) -> float | None:
    """Model FLOPs utilisation: tokens/s x (6N + 12LDT) over the device's peak (None when it is unknown)."""
    return None if run.peak_flops is None else tokens_per_second * state.model.flops_per_token() / run.peak_flops


def metrics_row(run: Run, state: TrainState, meter: Meter, now: float, lr: float, grad_norm: float,
                writer: checkpoint.Writer) -> dict:
    """A metrics.csv row for the steps since the last one; the held-out loss too when it is due."""
    p = run.params
    rate, waiting = meter.rate(state, now)
    utilisation = mfu(run, state, rate)
    row = {"step": state.step, "tokens": state.tokens, "train_loss": f"{sum(meter.losses) / len(meter.losses):.6f}",
           "eval_loss": "", "lr": f"{lr:.6g}", "grad_norm": f"{grad_norm:.4f}", "tokens_per_second": f"{rate:.1f}",
           "mfu": "" if utilisation is None else f"{utilisation:.4f}", "data_wait": f"{waiting:.4f}"}
    if run.env.main and (state.step % p.eval_every == 0 or state.step == p.steps):
        nll, count = stream_nll(state.model, run.valid, run.model_cfg.seq_len, p.batch_eval, run.env.device,
                                limit=p.eval_tokens, bf16=run.bf16)
        row["eval_loss"] = f"{nll / count:.6f}"
        if nll / count < state.best_loss:
            state.best_loss = nll / count
            writer.submit(lambda saved: checkpoint.save(saved, run.outputs.checkpoints / "best.pt"),
                          _model_file(run, state, "best", valid_loss=state.best_loss))
    return row


def throughput(run: Run, state: TrainState, meter: Meter, ended: float) -> str:
    """The log's summary of the loop's speed after its first step (where torch.compile compiles)."""
    rate, waiting = meter.rate(state, ended)
    utilisation = mfu(run, state, rate)
    return (f"loop: {rate:,.0f} tokens/s, MFU {'n/a' if utilisation is None else f'{100 * utilisation:.1f} %'}, "
            f"waiting for batches {100 * waiting:.2f} % of the time, steps {meter.step + 1}-{state.step} "
            "(evaluation, checkpoints and data loading included; checkpoints are written in the background)")


def _model_file(run: Run, state: TrainState, selected: str, **extra) -> dict:
    """What a model.pt / best.pt holds: weights, shape, settings, position, and which model it is."""
    return {"model": state.model.state_dict(), "model_config": run.model_cfg.to_dict(),
            "train_config": asdict(run.params), "step": state.step, "tokens": state.tokens, "selected": selected,
            **extra}


def save_checkpoint(run: Run, state: TrainState, writer: checkpoint.Writer) -> None:
    saved = state.to_dict(run)
    if run.env.main:
        writer.submit(lambda snapshot: checkpoint.save_rotating(run.outputs.checkpoints, snapshot,
                                                                run.params.keep_checkpoints), saved)
    if run.env.world > 1:
        dist.barrier()


def finish(run: Run, state: TrainState) -> Path:
    """Copy the live metrics.csv and best.pt beside the model, then write the final model.pt."""
    for live, out in ((run.outputs.checkpoints / "metrics.csv", run.outputs.metrics),
                      (run.outputs.checkpoints / "best.pt", run.outputs.best)):
        with atomic_path(out) as tmp:
            tmp.write_bytes(live.read_bytes())
    final = run.outputs.model
    checkpoint.save(_model_file(run, state, "final"), final)
    print(f"wrote {final} after {state.step} steps, {state.tokens:,} tokens; best.pt has the lowest validation "
          f"loss, {state.best_loss:.4f}", file=sys.stderr)
    return final


# --- the loop --------------------------------------------------------------------


def train(shards: Path, outputs: Outputs, model_cfg: GPTConfig, params: TrainParams,
          resume_from: Path | None = None, init_from: Path | None = None,
          on_step: Callable[[int], None] | None = None) -> Path | None:
    """Train, or resume from the newest checkpoint (or `resume_from`); write the final model and metrics.

    `init_from` starts a new run from the weights of a model.pt. `on_step(step)`
    is called after every optimizer step (and its checkpoint): an exception
    it raises ends the run as a crash would. Returns the model path (rank 0).
    """
    set_threads(params.threads)
    env = init_distributed(params.device)
    try:
        with checkpoint.holding(outputs.checkpoints) if env.main else contextlib.nullcontext():
            if env.main:
                remove_stale_temps(outputs.model.parent, checkpoint.RUN_FILES)
            return _train(Path(shards), outputs, model_cfg, params, env, resume_from, init_from, on_step)
    finally:
        if env.world > 1:
            dist.destroy_process_group()


def _train(shards: Path, outputs: Outputs, model_cfg: GPTConfig, params: TrainParams, env,
           resume_from: Path | None, init_from: Path | None, on_step: Callable[[int], None] | None) -> Path | None:
    """The run itself, in the held checkpoint folder."""
    run = setup(Path(shards), outputs, model_cfg, params, env)
    state = build_state(run)
    resume(run, state, resume_from, init_from)
    net = compiled(run, state.model)
    metrics = None
    if env.main:
        metrics = MetricsLog(outputs.checkpoints / "metrics.csv", outputs.tensorboard, state.step)
        print(data_budget(run, state.model.num_params()["total"]), file=sys.stderr)

    p = run.params
    gpu = torch.cuda.current_device() if env.device.type == "cuda" else None  # init_distributed set it
    feed = Prefetcher(run.batches, micro_slices(run), state.step, p.steps, gpu)
    writer = checkpoint.Writer()  # checkpoints are written while training goes on
    interval, loop = Meter(state, feed), None  # this metrics row's; the whole loop's after its first step
    bar = tqdm(total=p.steps, initial=state.step, desc="train", unit="step", mininterval=5, disable=not env.main)
    try:
        while state.step < p.steps:
            writer.check()  # a failed checkpoint write stops the run here, not after the last step
            loss, grad_norm, lr = train_step(run, net, state, feed.next())
            interval.losses.append(loss)
            bar.update(1)
            last = state.step == p.steps
            if state.step % p.log_every == 0 or state.step % p.eval_every == 0 or last:
                now = time.perf_counter()  # the evaluation below counts towards the next row's time
                row = metrics_row(run, state, interval, now, lr, grad_norm, writer)
                if env.main:
                    metrics.append(row)
                    bar.set_postfix(loss=row["train_loss"], eval=row["eval_loss"] or "-")
                interval = Meter(state, feed, start=now)
            if state.step % p.checkpoint_every == 0 or last:
                save_checkpoint(run, state, writer)
            if on_step is not None:
                on_step(state.step)
            loop = loop or Meter(state, feed)
        ended = time.perf_counter()
        writer.wait()  # the last checkpoints reach the disk (after the loop's time: no step waits for it)
    finally:
        feed.close()
        bar.close()  # before any error line, so the error is the last line of the log
        if metrics is not None:
            metrics.close()
        _land_checkpoints(writer)
    if env.main and loop is not None and state.step > loop.step:
        print(throughput(run, state, loop, ended), file=sys.stderr)
    return finish(run, state) if env.main else None


def _land_checkpoints(writer: checkpoint.Writer) -> None:
    """A crash never loses finished work: checkpoints asked for before it still reach the disk."""
    try:
        writer.wait()
    except UserError as exc:  # the loop's own error (if any) is the one to report
        print(f"error: {exc}", file=sys.stderr)


def model_config(shards: Path, arch: Architecture, params: TrainParams) -> GPTConfig:
    """The model's shape: the architecture, seq_len/rate/dropout of the training settings, the shards' vocabulary."""
    vocab_size = json.loads(Path(shards).read_text())["vocab_size"]
    try:
        return GPTConfig(vocab_size, params.seq_len, arch.layers, arch.heads, arch.dims, params.rate, params.dropout)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def train_command(save_model_path: Path, save_checkpoint_path: Path | None, shards: Path | None,
                  train_corpus: Path | None, eval_corpus: Path | None, vocab_path: Path | None,
                  from_checkpoint: Path | None, from_pretrained: Path | None, arch: Architecture,
                  params: TrainParams) -> None:
    """`python -m gpt2 train`: resolve the corpora (sharding text files once), then train."""
    checkpoints = save_checkpoint_path or save_model_path.parent / "checkpoints"
    if params.gpus:
        require_gpus(params.gpus)
        params = replace(params, device="cuda")
    # Shard text corpora before any relaunch, so the torchrun processes all find the shards made.
    manifest = manifest_for(shards, train_corpus, eval_corpus, vocab_path, checkpoints / "shards", need_train=True)
    if params.gpus > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_under_torchrun(params.gpus)
    train(manifest, Outputs(save_model_path, checkpoints), model_config(manifest, arch, params), params,
          resume_from=from_checkpoint, init_from=from_pretrained)
