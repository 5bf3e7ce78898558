"""Stage 4: training with exact resume, on CPU, one GPU, or many through torchrun DDP.

`train()` reads top to bottom: set-up, resume, then the loop of step,
log/evaluate, checkpoint. Its rooms: batches.py (the data order, and the
thread that prefetches batches), distributed.py (the processes), run_state.py
(a run's fixed parts, its state, and the rules for resuming and extending it),
metrics.py (metrics.csv and TensorBoard), checkpoint.py (atomic background
writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gpt2 import UserError, checkpoint
from gpt2.batches import Prefetcher
from gpt2.device import autocast, set_threads
from gpt2.distributed import all_mean, init_distributed, maybe_no_sync
from gpt2.evaluate import stream_nll
from gpt2.files import atomic_path, remove_stale_temps
from gpt2.launch import relaunch_under_torchrun, require_gpus
from gpt2.metrics import Meter, MetricsLog
from gpt2.model import GPT, GPTConfig
from gpt2.optim import current_lrs
from gpt2.params import Architecture, TrainParams
from gpt2.run_state import Outputs, Run, TrainState, build_state, data_budget, resume, setup
from gpt2.shards import manifest_for


def compiled(run: Run, model: GPT):
    """The module the loop calls: DDP-wrapped across processes, torch.compile'd when asked (auto: CUDA)."""
    net = DistributedDataParallel(model) if run.env.world > 1 else model
    if run.params.compile == "on" or (run.params.compile == "auto" and run.env.device.type == "cuda"):
        net = torch.compile(net)
    return net


class StopRequest:
    """SIGTERM (a SLURM time limit or preemption, scancel, a Ctrl-C'd Snakemake) asks the run to stop: after
    the step in progress it logs a row, checkpoints and ends with an error, through every `finally`, so the
    folder is released and a requeued or restarted job resumes from that step. A second SIGTERM, REPEAT_S
    or more after the first, stops at once (one within it is the same request: SLURM signals every
    process of a step, and torchrun forwards its own)."""

    REPEAT_S = 5.0

    def __init__(self, env):
        self.env, self.requested, self.previous, self.group = env, 0.0, None, None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        if self.env.world > 1 and dist.get_backend() != "gloo":
            # the ranks agree on a host tensor every step: over gloo, so no step waits for the GPU
            self.group = dist.new_group(backend="gloo")
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum, frame) -> None:
        if self.requested and time.monotonic() - self.requested >= self.REPEAT_S:
            raise UserError("stopped by a second SIGTERM before the step in progress ended; the newest checkpoint "
                            "is kept: run again to resume from it")
        self.requested = self.requested or time.monotonic()

    def agreed(self) -> bool:
        """Stop after this step? Several processes ask every rank's flag each step (a one-number all-reduce),
        so they stop at the same step, within one step of the signal."""
        if self.env.world == 1:
            return bool(self.requested)
        flag = torch.tensor(float(bool(self.requested)))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())


# --- one step, one log row, one checkpoint -------------------------------------------


def micro_slices(run: Run) -> list[slice]:
    """Which of a step's sequences each of this process's micro-batches holds (ranks interleave)."""
    p, env = run.params, run.env
    return [slice(lo, lo + p.micro_batch) for lo in ((m * env.world + env.rank) * p.micro_batch
                                                      for m in range(run.accum))]


def train_step(run: Run, net, state: TrainState, micro_batches: list[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float | None]]:
    """One optimizer step over this process's micro-batches: (mean loss, gradient norm) as device tensors,
    which nothing reads before a log step (as in nanoGPT), and the lrs used (optim.current_lrs)."""
    env, p = run.env, run.params
    loss_sum = torch.zeros((), device=env.device)
    for micro, host in enumerate(micro_batches):
        ids = host.to(env.device, non_blocking=True)
        x, y = ids[:, :-1], ids[:, 1:]  # (B, T) each
        with maybe_no_sync(net, micro == run.accum - 1), autocast(env.device, run.bf16):
            _, loss, _ = net(x, y)
        state.scaler.scale(loss / run.accum).backward()
        loss_sum += loss.detach() / run.accum
    state.scaler.unscale_(state.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), p.grad_clip)
    train_loss = all_mean(loss_sum, env)
    lrs = current_lrs(state.optimizer)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step, state.tokens = state.step + 1, state.tokens + p.batch_tokens
    return train_loss, grad_norm, lrs


def check_finite(run: Run, state: TrainState, meter: Meter) -> None:
    """Stop on a non-finite loss or gradient norm since the meter's start (read here, on log and checkpoint
    steps, so that no checkpoint holds the damage)."""
    if not meter.finite():
        raise UserError(f"non-finite loss or gradient norm in steps {meter.step + 1}-{state.step}; the last good "
                        f"checkpoint in {run.outputs.checkpoints} is kept -- lower train.lr or check the data")


def mfu(run: Run, state: TrainState, tokens_per_second: float) -> float | None:
    """Model FLOPs utilisation per device: the run's tokens/s x (6N + 12LDT), shared by its processes (one
    device each), over one device's peak (None when the peak is unknown)."""
    if run.peak_flops is None:
        return None
    return tokens_per_second / run.env.world * state.model.flops_per_token() / run.peak_flops


def metrics_row(run: Run, state: TrainState, meter: Meter, now: float, lrs: dict[str, float | None],
                writer: checkpoint.Writer) -> dict:
    """A metrics.csv row for the steps since the last one; the held-out loss too when it is due."""
    p = run.params
    rate, waiting = meter.rate(state, now)
    utilisation = mfu(run, state, rate)
    row = {"step": state.step, "tokens": state.tokens, "train_loss": f"{meter.loss():.6f}",
           "eval_loss": "", **{k: "" if v is None else f"{v:.6g}" for k, v in lrs.items()}, "grad_norm": f"{float(meter.grad_norm):.4f}", "tokens_per_second": f"{rate:.1f}",
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
        with (checkpoint.holding(outputs.checkpoints) if env.main else contextlib.nullcontext(),
              StopRequest(env) as stop):
            if env.main:
                remove_stale_temps(outputs.model.parent, checkpoint.RUN_FILES)
            return _train(Path(shards), outputs, model_cfg, params, env, stop, resume_from, init_from, on_step)
    finally:
        if env.world > 1:
            dist.destroy_process_group()


def _train(shards: Path, outputs: Outputs, model_cfg: GPTConfig, params: TrainParams, env, stop: StopRequest,
           resume_from: Path | None, init_from: Path | None, on_step: Callable[[int], None] | None) -> Path | None:
    """The run itself, in the held checkpoint folder."""
    run = setup(Path(shards), outputs, model_cfg, params, env)
    state = build_state(run)
    resume(run, state, resume_from, init_from)
    net = compiled(run, state.model)
    metrics = None
    if env.main:
        metrics = MetricsLog(outputs.checkpoints / "metrics.csv", outputs.tensorboard, state.step,
                             {"optimizer": params.optimizer, "schedule": params.schedule})
        print(data_budget(run, state.model.num_params()["total"]), file=sys.stderr)

    p = run.params
    gpu = torch.cuda.current_device() if env.device.type == "cuda" else None  # init_distributed set it
    feed = Prefetcher(run.batches, micro_slices(run), state.step, p.steps, gpu, readers=p.loader_threads)
    writer = checkpoint.Writer()  # checkpoints are written while training goes on
    interval, loop = Meter(state, feed), None  # this metrics row's; the whole loop's after its first step
    bar = tqdm(total=p.steps, initial=state.step, desc="train", unit="step", mininterval=5, disable=not env.main)
    try:
        while state.step < p.steps:
            writer.check()  # a failed checkpoint write stops the run here, not after the last step
            loss, grad_norm, lrs = train_step(run, net, state, feed.next())
            interval.add(loss, grad_norm, state.scaler.is_enabled())
            bar.update(1)
            last = state.step == p.steps
            logs = state.step % p.log_every == 0 or state.step % p.eval_every == 0 or last
            saves = state.step % p.checkpoint_every == 0 or last
            stops = stop.agreed() and not last  # the last step finishes the run anyway
            logs, saves = logs or stops, saves or stops
            if logs or saves:
                check_finite(run, state, interval)
            if logs:
                now = time.perf_counter()  # the evaluation below counts towards the next row's time
                row = metrics_row(run, state, interval, now, lrs, writer)
                if env.main:
                    metrics.append(row)
                    bar.set_postfix(loss=row["train_loss"], eval=row["eval_loss"] or "-")
                interval = Meter(state, feed, start=now)
            if saves:
                save_checkpoint(run, state, writer)
            if stops:
                raise UserError(f"stopped by SIGTERM after step {state.step} of {p.steps}; its checkpoint is in "
                                f"{outputs.checkpoints}: run again (or let SLURM requeue the job) to resume there")
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
    """The model's shape, joined here only: the architecture, seq_len/mlp_ratio/dropout of the training settings,
    the shards' vocabulary."""
    vocab_size = json.loads(Path(shards).read_text())["vocab_size"]
    try:
        return GPTConfig(vocab_size, params.seq_len, arch.layers, arch.heads, arch.dims, params.mlp_ratio, params.dropout)
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
