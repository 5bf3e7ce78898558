"""What training reports: metrics.csv rows and TensorBoard scalars, and the meter behind their rates."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from gpt2.batches import Prefetcher
    from gpt2.run_state import TrainState

# tokens_per_second, mfu and data_wait are over the wall time since the previous row: evaluation,
# checkpoints and data loading included. data_wait is the share of it spent waiting for batches.
# lr is train.lr's (AdamW's group) and muon_lr train.muon_lr's (empty under adamw) at the row's last step;
# optimizer and schedule name the run's recipe on every row.
METRICS = ["step", "tokens", "train_loss", "eval_loss", "lr", "muon_lr", "tokens_per_second", "grad_norm", "mfu", "data_wait",
           "optimizer", "schedule"]


class MetricsLog:
    """metrics.csv rows and TensorBoard scalars as training goes; on resume, steps past the checkpoint go."""

    SCALARS = {"train_loss": "loss/train", "eval_loss": "loss/valid", "lr": "lr", "muon_lr": "lr/muon", "tokens_per_second": "tokens_per_s",
               "grad_norm": "grad_norm", "mfu": "mfu", "data_wait": "data_wait"}

    def __init__(self, path: Path, tensorboard: Path, resume_step: int, recipe: dict[str, str]):
        from torch.utils.tensorboard import SummaryWriter

        self.path, self.recipe = path, recipe
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
        self.board.add_text("recipe", ", ".join(f"{k} {v}" for k, v in recipe.items()), resume_step)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, METRICS).writerow(row | self.recipe)
        for key, tag in self.SCALARS.items():
            if row[key] != "":
                self.board.add_scalar(tag, float(row[key]), row["step"])
        self.board.flush()

    def close(self) -> None:
        self.board.close()


class Meter:
    """Wall time, tokens, time spent waiting for batches and train losses from `start` on.

    Losses and gradient norms stay on the device until a row reads them (`loss`, `finite`): a step
    that waited for its loss to reach the host would leave the GPU idle while the next one is queued.
    """

    def __init__(self, state: TrainState, feed: Prefetcher, start: float | None = None):
        self.start = time.perf_counter() if start is None else start
        self.step, self.tokens, self.feed, self.waited = state.step, state.tokens, feed, feed.waited
        self.steps, self.loss_sum, self.grad_norm, self.bad = 0, 0.0, None, None

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, norm_may_overflow: bool) -> None:
        """One step's loss and gradient norm (device tensors); `norm_may_overflow`: fp16 loss scaling, which
        skips the steps whose norm is not finite."""
        bad = ~torch.isfinite(loss) if norm_may_overflow else ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        self.bad = bad if self.bad is None else self.bad | bad
        self.loss_sum = self.loss_sum + loss.double()  # float64: the same sum as adding the losses on the host
        self.steps, self.grad_norm = self.steps + 1, grad_norm

    def finite(self) -> bool:
        return self.bad is None or not bool(self.bad)

    def loss(self) -> float:
        """The mean train loss of the steps since `start`."""
        return float(self.loss_sum) / self.steps

    def rate(self, state: TrainState, now: float) -> tuple[float, float]:
        """(tokens/s, share of the time spent waiting for batches) up to `now`."""
        seconds = now - self.start
        return (state.tokens - self.tokens) / seconds, (self.feed.waited - self.waited) / seconds
