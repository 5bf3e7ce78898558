"""Stage 4: training with exact resume, on CPU, one GPU, or many through torchrun DDP.

The data order is a pure function of the step: the train stream is cut into
sequences of seq_len + 1 tokens, each epoch visits them in a seeded
permutation, and optimizer step s consumes the next `batch_tokens / seq_len`
of them. A checkpoint therefore only needs the step to know its data position,
and a run with W processes and A accumulation steps sees exactly the same
global batches as a single process with W * A accumulation steps.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gpt2 import UserError
from gpt2.evaluate import autocast, half_dtype, load_model, stream_nll, use_bf16
from gpt2.files import atomic_path
from gpt2.model import GPT, GPTConfig
from gpt2.shards import TokenStream, check_vocab

METRICS = ["step", "tokens", "train_loss", "eval_loss", "lr", "tokens_per_second", "grad_norm"]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_tokens: int = 0  # global batch per optimizer step, in tokens; 0: micro_batch x seq_len x processes
    micro_batch: int = 8  # sequences per forward pass per process
    batch_eval: int = 16  # sequences per forward pass in periodic evaluation
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 1337
    eval_every: int = 100
    eval_tokens: int = 16384  # held-out slice (start of the test split) for periodic evaluation
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    compile: str = "auto"  # auto: on for CUDA
    grad_ckpt: bool = False
    amp: str = "auto"  # bf16 autocast: auto (CUDA, and CPUs with native bf16), on, off

    # Keys that change the trajectory: a checkpoint only resumes a run that agrees on them.
    TRAJECTORY = ("steps", "batch_tokens", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "beta1",
                  "beta2", "grad_clip", "seed", "amp")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


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

    def tensor(self, seqs: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.stream.window(i * self.seq_len, self.seq_len + 1) for i in seqs]).astype(np.int64)
        ids = torch.from_numpy(rows)
        if device.type == "cuda":
            ids = ids.pin_memory().to(device, non_blocking=True)
        return ids[:, :-1], ids[:, 1:]


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
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), world, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def all_mean(value: torch.Tensor, env: Dist) -> float:
    if env.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world
    return float(value)


# --- checkpoints ---------------------------------------------------------------


def checkpoint_paths(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, newest first."""
    return sorted(folder.glob("step_*.pt"), reverse=True)


def load_checkpoint(path: Path) -> dict:
    """One checkpoint file, as --from_checkpoint names it."""
    if not Path(path).is_file():
        raise UserError(f"--from_checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"--from_checkpoint {path}: not a loadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "optimizer" not in state:
        raise UserError(f"--from_checkpoint {path}: not a training checkpoint (use --from_pretrained for a model)")
    print(f"resuming from {path} (step {state['step']})", file=sys.stderr)
    return state


def _init_weights(model: GPT, path: Path) -> None:
    pretrained, _ = load_model(path, torch.device("cpu"))
    if pretrained.cfg != model.cfg:
        raise UserError(f"--from_pretrained {path}: its architecture {pretrained.cfg.to_dict()} differs from "
                        f"the flags' {model.cfg.to_dict()}")
    model.load_state_dict(pretrained.state_dict())
    print(f"initialised from {path}", file=sys.stderr)


def load_latest(folder: Path) -> dict | None:
    """The newest checkpoint that loads; a damaged one is reported and skipped."""
    for path in checkpoint_paths(folder):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            print(f"resuming from {path} (step {state['step']})", file=sys.stderr)
            return state
        except Exception as exc:
            print(f"skipping unreadable checkpoint {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return None


def save_state(state: dict, path: Path) -> None:
    """torch.save through a temp file; a failed write (full disk) leaves `path` as it was."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except RuntimeError as exc:  # torch's zip writer reports write errors as RuntimeError
        raise UserError(f"could not write {path} ({str(exc).splitlines()[0][:80]}); is the disk full? "
                        "Earlier checkpoints are kept") from None


def save_checkpoint(folder: Path, state: dict, keep: int) -> Path:
    path = folder / f"step_{state['step']:07d}.pt"
    save_state(state, path)
    for old in checkpoint_paths(folder)[keep:]:
        old.unlink()
    return path


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


# --- metrics -------------------------------------------------------------------


class MetricsLog:
    """metrics.csv rows as training goes; on resume, rows past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if resume_step and path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, METRICS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, METRICS).writerow(row)


# --- the loop --------------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    model: Path  # the final model, written once all steps are done
    checkpoints: Path  # checkpoints and the live metrics.csv

    @property
    def metrics(self) -> Path:
        return self.model.with_name("metrics.csv")


def train(manifest: Path, outputs: Outputs, model_cfg: GPTConfig, cfg: TrainConfig, device: str = "auto",
          threads: int | None = None, stop_after: int | None = None, resume_from: Path | None = None,
          init_from: Path | None = None) -> Path | None:
    """Train, or resume from the newest checkpoint (or `resume_from`); write the final model and metrics.

    `init_from` starts a new run from the weights of a model.pt. `stop_after`
    ends the call after that many steps, as a crash would (tests use it).
    """
    if threads:
        torch.set_num_threads(threads)
    env = init_distributed(device)
    try:
        return _train(Path(manifest), outputs, model_cfg, cfg, env, stop_after, resume_from, init_from)
    finally:
        if env.world > 1:
            dist.destroy_process_group()


def _accumulation(cfg: TrainConfig, seq_len: int, world: int) -> int:
    per_pass = cfg.micro_batch * seq_len * world
    if cfg.batch_tokens == 0:
        return 1
    if cfg.batch_tokens % per_pass:
        raise UserError(f"train.batch_tokens ({cfg.batch_tokens}) must be a multiple of micro_batch x seq_len x "
                        f"processes = {cfg.micro_batch} x {seq_len} x {world} = {per_pass}")
    return cfg.batch_tokens // per_pass


def _train(manifest: Path, outputs: Outputs, model_cfg: GPTConfig, cfg: TrainConfig, env: Dist,
           stop_after: int | None, resume_from: Path | None, init_from: Path | None) -> Path | None:
    accum = _accumulation(cfg, model_cfg.seq_len, env.world)
    if cfg.batch_tokens == 0:
        cfg = replace(cfg, batch_tokens=cfg.micro_batch * model_cfg.seq_len * env.world)
    check_vocab(manifest)
    train_stream, test_stream = TokenStream(manifest, "train"), TokenStream(manifest, "test")
    if train_stream.manifest["vocab_size"] != model_cfg.vocab_size:
        raise UserError(f"model vocab_size {model_cfg.vocab_size} != shards' {train_stream.manifest['vocab_size']}")
    batches = Batches(train_stream, model_cfg.seq_len, cfg.batch_tokens // model_cfg.seq_len, cfg.seed)
    ckpt_dir = outputs.checkpoints
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(env.device)
    model.grad_ckpt = cfg.grad_ckpt
    cuda = env.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  fused=cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))

    state = load_checkpoint(resume_from) if resume_from else load_latest(ckpt_dir)
    step = tokens = 0
    if state is not None:
        _check_same_run(state, model_cfg, cfg, ckpt_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, tokens = state["step"], state["tokens"]
        restore_rng(state["rng"], env)
    else:
        if init_from is not None:
            _init_weights(model, init_from)
        torch.manual_seed(cfg.seed + env.rank)
    metrics = MetricsLog(ckpt_dir / "metrics.csv", step) if env.main else None

    net = DistributedDataParallel(model) if env.world > 1 else model
    if cfg.compile == "on" or (cfg.compile == "auto" and cuda):
        net = torch.compile(net)
    bf16 = use_bf16(cfg.amp, env.device)
    # fp16 (GPUs without bf16) needs loss scaling; disabled, the scaler passes everything through.
    scaler = torch.amp.GradScaler(env.device.type, enabled=bf16 and half_dtype(env.device) == torch.float16)
    if state is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])

    first_step, window_loss, window_start = step, [], time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", mininterval=5, disable=not env.main)
    try:
        while step < cfg.steps:
            seqs = batches.indices(step)
            loss_sum = torch.zeros((), device=env.device)
            for micro in range(accum):
                lo = (micro * env.world + env.rank) * cfg.micro_batch
                x, y = batches.tensor(seqs[lo: lo + cfg.micro_batch], env.device)
                sync = micro == accum - 1 or env.world == 1
                with _maybe_no_sync(net, sync), autocast(env.device, bf16):
                    _, loss, _ = net(x, y)
                scaler.scale(loss / accum).backward()
                loss_sum += loss.detach() / accum
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            train_loss = all_mean(loss_sum, env)
            if not math.isfinite(train_loss) or not (math.isfinite(grad_norm) or scaler.is_enabled()):
                raise UserError(f"non-finite loss ({train_loss}) at step {step + 1}; the last good checkpoint in "
                                f"{ckpt_dir} is kept -- lower train.lr or check the data")
            lr = scheduler.get_last_lr()[0]
            scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, tokens = step + 1, tokens + cfg.batch_tokens
            window_loss.append(train_loss)
            bar.update(1)

            if step % cfg.log_every == 0 or step % cfg.eval_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                row = {"step": step, "tokens": tokens, "train_loss": f"{sum(window_loss) / len(window_loss):.6f}",
                       "eval_loss": "", "lr": f"{lr:.6g}", "grad_norm": f"{grad_norm:.4f}",
                       "tokens_per_second": f"{len(window_loss) * cfg.batch_tokens / (now - window_start):.1f}"}
                if env.main and (step % cfg.eval_every == 0 or step == cfg.steps):
                    nll, count = stream_nll(model, test_stream, model_cfg.seq_len, cfg.batch_eval, env.device,
                                            limit=cfg.eval_tokens, bf16=bf16)
                    row["eval_loss"] = f"{nll / count:.6f}"
                if env.main:
                    metrics.append(row)
                    bar.set_postfix(loss=row["train_loss"], eval=row["eval_loss"] or "-")
                window_loss, window_start = [], time.perf_counter()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
                _checkpoint(ckpt_dir, parts, step, tokens, model_cfg, cfg, env)
            if stop_after is not None and step - first_step >= stop_after and step < cfg.steps:
                return None
    finally:
        bar.close()  # before any error line, so the error is the last line of the log
    if not env.main:
        return None
    return _finish(outputs, model, step, tokens, model_cfg, cfg)


def _checkpoint(folder, parts: dict, step, tokens, model_cfg, cfg, env) -> None:
    """Save the state_dict of each of `parts` (model, optimizer, scheduler, scaler) with step and RNG."""
    rng = rng_states(env)  # every rank takes part in the gather
    if env.main:
        save_checkpoint(folder, {name: part.state_dict() for name, part in parts.items()} | {
            "step": step, "tokens": tokens, "rng": rng, "model_config": model_cfg.to_dict(),
            "train_config": asdict(cfg)}, cfg.keep_checkpoints)
    if env.world > 1:
        dist.barrier()


def _finish(outputs: Outputs, model, step, tokens, model_cfg, cfg) -> Path:
    with atomic_path(outputs.metrics) as tmp:
        tmp.write_bytes((outputs.checkpoints / "metrics.csv").read_bytes())
    final = outputs.model
    save_state({"model": model.state_dict(), "model_config": model_cfg.to_dict(), "train_config": asdict(cfg),
                "step": step, "tokens": tokens}, final)
    print(f"wrote {final} after {step} steps, {tokens:,} tokens", file=sys.stderr)
    return final


def _check_same_run(state: dict, model_cfg: GPTConfig, cfg: TrainConfig, folder: Path) -> None:
    diffs = [k for k in TrainConfig.TRAJECTORY if state["train_config"].get(k) != getattr(cfg, k)]
    diffs += [k for k, v in model_cfg.to_dict().items() if state["model_config"].get(k) != v]
    if diffs:
        raise UserError(f"checkpoints in {folder} come from a run with other {', '.join(diffs)}; "
                        "restore those settings to resume, or delete the folder to start over")


def _maybe_no_sync(net, sync: bool):
    # DDP all-reduces gradients only on the last micro-batch of a step.
    return net.no_sync() if not sync and hasattr(net, "no_sync") else contextlib.nullcontext()
