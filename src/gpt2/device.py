"""Where a computation runs and in which precision: one place for device and bf16 choices."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from gpt2 import UserError


def resolve_device(device: str) -> torch.device:
    """auto: CUDA when torch sees one, else the CPU; cuda without a GPU is a one-line error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_threads(threads: int) -> None:
    """CPU threads for torch's intra-op pool."""
    torch.set_num_threads(threads)


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 / AMX): there bf16 autocast trains ~1.8x faster than fp32.

    Elsewhere (AVX2 only) bf16 is emulated and ~300x slower, so `auto` never picks it.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def use_bf16(amp: str, device: torch.device) -> bool:
    """amp: on / off, or auto = CUDA, and CPUs with native bf16."""
    if amp in ("on", "off"):
        return amp == "on"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def half_dtype(device: torch.device) -> torch.dtype:
    """bf16, or fp16 on GPUs without bf16 (before Ampere), where training then needs a GradScaler."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    """Mixed-precision autocast on `device` when enabled (the loss is always computed in fp32)."""
    return torch.autocast(device.type, dtype=half_dtype(device), enabled=enabled)


def precision_name(bf16: bool, device: torch.device) -> str:
    """How a report names the precision: "bf16 autocast", "fp16 autocast" or "fp32"."""
    if not bf16:
        return "fp32"
    return ("fp16" if half_dtype(device) == torch.float16 else "bf16") + " autocast"
