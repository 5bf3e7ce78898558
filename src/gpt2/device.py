"""Where a computation runs and in which precision: one place for device and bf16 choices."""

from __future__ import annotations

import os
import re
import statistics
import time
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


# oneDNN instruction sets without bf16 dot products: capped to one of them (ONEDNN_MAX_CPU_ISA=AVX2, how
# the AVX2 path is timed on a faster machine), an AVX512-BF16 CPU emulates bf16 matmuls like an AVX2 one.
NO_BF16_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 / AMX): there bf16 autocast trains ~1.8x faster than fp32.

    Elsewhere (AVX2 only, or oneDNN capped below AVX512-BF16) bf16 is emulated and ~300x slower, so
    `auto` never picks it.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in NO_BF16_ISAS:
        return False
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
    """bf16, or fp16 on GPUs without native bf16 (before Ampere: V100, T4), where training then needs a
    GradScaler. torch counts emulated bf16 as supported by default; emulation is many times slower."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


def native_bf16(device: torch.device) -> bool:
    """bf16 matmuls run in hardware here: GPUs from Ampere on, CPUs with AVX512-BF16 or AMX."""
    return half_dtype(device) == torch.bfloat16 if device.type == "cuda" else cpu_has_bf16()


def autocast(device: torch.device, enabled: bool):
    """Mixed-precision autocast on `device` when enabled (the loss is always computed in fp32)."""
    return torch.autocast(device.type, dtype=half_dtype(device), enabled=enabled)


def precision_name(bf16: bool, device: torch.device) -> str:
    """How a report names the precision: "bf16 autocast", "fp16 autocast" or "fp32"."""
    if not bf16:
        return "fp32"
    return ("fp16" if half_dtype(device) == torch.float16 else "bf16") + " autocast"


# Dense 16-bit tensor-core peaks (bf16; fp16 on V100/T4, which lack bf16) from the vendors' datasheets, in
# FLOP/s, per GPU. Matched in order against torch.cuda.get_device_name: the PCIe and NVL variants of
# H100/H200 first (lower clocks and power than SXM), then whole model names (A10 is not A100, L4 not L40).
DATASHEET_PEAKS = [(r"\bH100\b.*\bPCIe\b", 756e12), (r"\b(H100|H200)\b.*\bNVL\b", 835e12),
                   (r"\b(H100|H200|GH200)\b", 989e12), (r"\bB200\b", 2250e12), (r"\b(A100|A800)\b", 312e12),
                   (r"\bL40S\b", 362e12), (r"\bL40\b", 181e12), (r"\bA10\b", 125e12), (r"\bL4\b", 121e12),
                   (r"\bRTX 4090\b", 165e12), (r"\bRTX 3090\b", 71e12), (r"\bV100\b", 125e12), (r"\bT4\b", 65e12)]


def datasheet_peak(name: str) -> tuple[float | None, str]:
    """The dense 16-bit peak of the GPU called `name` (torch.cuda.get_device_name), and its source."""
    for pattern, peak in DATASHEET_PEAKS:
        if re.search(pattern, name):
            return peak, f"{name} datasheet, dense 16-bit"
    return None, f"no datasheet peak for {name}"


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5, best: bool = False) -> float:
    """Measured FLOP/s of a square matmul on the CPU: the median of `repeats`, or with `best` the fastest."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / (min(times) if best else statistics.median(times))


def peak_flops(device: torch.device, bf16: bool) -> tuple[float | None, str]:
    """The device's peak FLOP/s in the precision used, and where the figure comes from.

    CPU: a measured matmul in that precision. GPU: the datasheet's dense 16-bit
    peak for known models (None for others, so MFU is left out rather than made up).
    """
    if device.type == "cpu":
        dtype = torch.bfloat16 if bf16 else torch.float32
        # The fastest of several: a shared or throttled machine's slow moments must not lower the peak.
        return matmul_peak(dtype, repeats=5, best=True), f"measured {dtype} 2048^3 matmul, fastest of 5"
    peak, source = datasheet_peak(torch.cuda.get_device_name(device))
    return (peak if bf16 else None), source
