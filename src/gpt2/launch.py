"""How a training job starts its processes; torch-free, so Snakemake can render it cheaply."""

from __future__ import annotations


def launch_command(gpus: int, nodes: int = 1, port: int = 29500) -> str:
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
