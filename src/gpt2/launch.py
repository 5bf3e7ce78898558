"""How a training job starts its processes; importing it stays torch-free, so Snakemake renders commands cheaply."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from gpt2 import UserError


def launch_command(gpus: int, nodes: int, port: int = 29500) -> str:
    """The shell prefix that runs `<prefix> train ...` on `nodes` x `gpus` processes.

    One process: plain python. One node: torchrun --standalone. Several nodes
    (inside a SLURM allocation): srun starts one torchrun per node, which meet
    at a c10d rendezvous on the allocation's first node.
    """
    if nodes > 1:
        return ('export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1); '
                f"srun --nodes {nodes} --ntasks-per-node 1 torchrun --nnodes {nodes} "
                f"--nproc_per_node {max(gpus, 1)} --rdzv_backend c10d --rdzv_id $SLURM_JOB_ID "
                f"--rdzv_endpoint $MASTER_ADDR:{port} -m gpt2")
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus} -m gpt2"
    return "python -m gpt2"


def require_gpus(gpus: int) -> None:
    """--gpus N needs N CUDA devices that torch can see."""
    import torch  # here, so that rendering a launch command stays torch-free

    if torch.cuda.device_count() < gpus:
        raise UserError(f"--gpus {gpus}, but torch sees {torch.cuda.device_count()} CUDA device(s); "
                        "run it on a GPU node, or train on the CPU with train.gpus: 0 (no --gpus)")


def relaunch_under_torchrun(gpus: int) -> None:
    """Become `torchrun --standalone --nproc_per_node N -m gpt2 <the same arguments>` (never returns)."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    os.execv(torchrun, [torchrun, "--standalone", "--nproc_per_node", str(gpus), "-m", "gpt2", *sys.argv[1:]])
