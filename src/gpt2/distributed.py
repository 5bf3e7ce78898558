"""Processes of one training run: torchrun's rendezvous, averaging across ranks, every rank's RNG."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gpt2.device import resolve_device


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


def all_mean(value: torch.Tensor, env: Dist) -> torch.Tensor:
    """The mean of `value` over the ranks, left on the device."""
    if env.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world
    return value


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


def maybe_no_sync(net, sync: bool):
    # DDP all-reduces gradients only on the last micro-batch of a step.
    return net.no_sync() if not sync and hasattr(net, "no_sync") else contextlib.nullcontext()
