"""How a training job starts its processes and what it asks a scheduler for; importing it stays torch-free,
so Snakemake renders commands and resources cheaply."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
from pathlib import Path

from gpt2 import UserError


def launch_command(gpus: int, nodes: int, gpu_model: str = "", port: int = 29500) -> str:
    """The shell prefix (a Snakemake shell template: `{threads}` is the rule's threads) that runs
    `<prefix> train ...` on `nodes` x `gpus` processes.

    One process: plain python. One node: torchrun --standalone. Several nodes
    (inside a SLURM allocation of one task per node, `job_layout`): srun starts
    one task per node, one torchrun each, which meet at a c10d rendezvous on the
    allocation's first node -- where the batch script, and so this command, runs:
    its own hostname is what its torchrun recognises as the rendezvous host,
    which then serves the store. The port follows the job id, so two jobs that
    share a first node do not meet each other's.

    srun states the step's whole shape (tasks; each task's CPUs, `{threads}` for each of
    its processes; each node's GPUs): Snakemake's jobstep executor removes the
    allocation's SLURM_NTASKS, SLURM_CPUS_PER_TASK and GPU variables before it runs
    the rule's shell, so a bare srun would start one task on one CPU, and the other
    nodes' torchruns would never come.
    """
    if nodes > 1:
        per_node = max(gpus, 1)
        gres = f" --gres={gpu_gres(gpus, gpu_model)}" if gpus else ""
        return ("export MASTER_ADDR=$(hostname); "
                f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 "
                f"--cpus-per-task $(({per_node} * {{threads}})){gres} "
                f"--kill-on-bad-exit=1 torchrun --nnodes {nodes} --nproc_per_node {per_node} "
                f"--rdzv_backend c10d --rdzv_id $SLURM_JOB_ID "
                f"--rdzv_endpoint $MASTER_ADDR:$(({port} + SLURM_JOB_ID % 1000)) -m gpt2")
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus} -m gpt2"
    return "python -m gpt2"


def gpu_gres(gpus: int, gpu_model: str) -> str:
    """SLURM's per-node generic resource for `gpus` GPUs, of one type where the cluster names them."""
    return f"gpu:{gpu_model}:{gpus}" if gpu_model else f"gpu:{gpus}"


def job_layout(gpus: int, nodes: int, gpu_model: str = "") -> dict[str, int | str]:
    """The train rule's resources that shape its SLURM job (snakemake-executor-plugin-slurm's names).

    One node: `gpu` GPUs (sbatch --gpus, the job's total, here the node's), and the plugin runs the
    rule's shell in one job step of its own. Several nodes: the plugin's multi-task route -- `mpi`
    tells it that the rule's shell starts the job steps itself (no step of its own around it, in which
    our srun would be a nested step asking for GPUs the outer one holds), one task per node (`tasks`
    with `nodes`; tasks_per_gpu 0 keeps it from reading tasks as tasks per GPU), and each node's
    GPUs as a per-node generic resource (--gres=gpu:G; --gpus=G would be G for the whole job), the GPU
    type folded into it (gpu:TYPE:G): the plugin's gpu_model would add a job-wide --gpus=TYPE:1 beside it.
    """
    if nodes == 1:
        return {"gpu": gpus, "nodes": 1, **({"gpu_model": gpu_model} if gpus and gpu_model else {})}
    layout: dict[str, int | str] = {"nodes": nodes, "tasks": nodes, "tasks_per_gpu": 0, "mpi": "srun"}
    if gpus:
        layout["gres"] = gpu_gres(gpus, gpu_model)
    return layout


# --- host memory a job needs, for the scheduler's mem_mb ---------------------------------------

# A process's own host memory before any model: torch with CUDA's libraries and context (reasoned, not
# yet measured on a GPU), or CPU torch (measured on this project's CPUs: docs/training.md, "Memory").
PROCESS_MB = {"cuda": 3000, "cpu": 700}
# A floor for torch.compile's inductor compile workers beside each compiling CUDA process (a pool of up
# to 32 subprocesses, each a Python with torch imported): unmeasured until a GPU run does
# (benchmarks/gpu_workflow.sh records the job's peak RSS); train.mem_mb overrides the computed total.
COMPILE_MB = 4000
# Bytes per parameter: fp32 weights, and AdamW's two fp32 moments beside them (an upper bound with
# optimizer muon, whose blocks' matrices keep one momentum buffer).
WEIGHT_BYTES, ADAMW_BYTES = 4, 8
# Host copies of the training state that rank 0's checkpoint writer may hold at once (checkpoint.Writer).
PENDING_CHECKPOINTS = 2


def param_count(layers: int, dims: int, vocab_size: int, seq_len: int, mlp_ratio: int, pad_to: int = 64) -> int:
    """Parameters of our GPT (model.GPT) of this shape: the padded token embedding, positions, blocks, final norm."""
    padded = -(-vocab_size // pad_to) * pad_to
    block = (4 + 2 * mlp_ratio) * dims * dims + (9 + mlp_ratio) * dims  # qkv, proj, fc, proj with biases; 2 norms
    return (padded + seq_len) * dims + layers * block + 2 * dims


def train_memory_mb(params: int, gpus: int, compiles: bool = False) -> int:
    """Host memory per node for training a model of `params` parameters, 10 % to spare.

    Each process: its PROCESS_MB, and COMPILE_MB where it compiles on a GPU; on the CPU also its model,
    gradients and AdamW moments (on a GPU those live on the device: the model is built there). Rank 0's node: the checkpoint writer's
    pending host copies of weights and moments. A resume reads its checkpoint memory-mapped (shared
    page cache, before any write is pending), so it adds nothing beyond that.
    """
    processes = max(gpus, 1)
    per_process = (PROCESS_MB["cuda" if gpus else "cpu"] + (COMPILE_MB if gpus and compiles else 0)) * 2 ** 20
    if not gpus:
        per_process += params * (2 * WEIGHT_BYTES + ADAMW_BYTES)
    writer = PENDING_CHECKPOINTS * params * (WEIGHT_BYTES + ADAMW_BYTES)
    return int(1.1 * (processes * per_process + writer) / 2 ** 20) + 1


def eval_memory_mb(params: int, gpu: bool) -> int:
    """Host memory for evaluating a model of `params` parameters: the process and the loaded weights
    (twice: the checkpoint's and the model's), 10 % to spare."""
    return int(1.1 * (PROCESS_MB["cuda" if gpu else "cpu"] * 2 ** 20 + 2 * params * WEIGHT_BYTES) / 2 ** 20) + 1


def hf_param_count(folder: str | os.PathLike) -> int:
    """Parameters of a transformers model folder, from its *.safetensors headers (8 bytes of length, then
    JSON with each tensor's shape), or else its pickled weights' size in fp32 (no torch, no model load)."""
    if not Path(folder).is_dir():  # Snakemake takes this for an input not made yet (a dry run: mem_mb <TBD>)
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(folder))
    headers = sorted(Path(folder).glob("*.safetensors"))
    if not headers:
        return sum(p.stat().st_size for p in Path(folder).glob("*.bin")) // WEIGHT_BYTES
    count = 0
    for path in headers:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size <= 100 * 2 ** 20:
                raise UserError(f"{path}: not a safetensors file (a header of {size:,} bytes)")
            tensors = json.loads(fh.read(size))
        count += sum(math.prod(t["shape"]) for name, t in tensors.items() if name != "__metadata__")
    return count


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
