"""Shared by the benchmarks: alternating timed runs, medians, tables, JSON."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

OUT = ROOT / "results" / "bench"


def alternate(runs: dict[str, Callable[[], int]], repeats: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Time each callable `repeats` times, interleaved so machine noise hits all alike.

    A callable returns how many tokens it processed; the result holds, per name,
    the median and min-max of tokens/s over the timed runs.
    """
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - start))
    return {name: {"median": statistics.median(r), "min": min(r), "max": max(r), "runs": r}
            for name, r in rates.items()}


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    return "\n".join([line, "  ".join("-" * w for w in widths)] +
                     ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def machine() -> dict:
    """What a timing depends on: the CPU's model name and vector flags (lscpu's), torch's kernel path, threads."""
    cpu, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"^model name\s*:\s*(.+)$", info, re.M)[1].strip()
        flags = sorted({f for f in re.search(r"^flags\s*:(.*)$", info, re.M)[1].split()
                        if f.startswith(("avx", "amx"))})
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": cpu, "vector_flags": flags, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}


def write(name: str, result: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2) + "\n")
    return path


def model_pair(layers: int, heads: int, dims: int, vocab: int = 8000, seq_len: int = 128):
    """This project's GPT and transformers' GPT2LMHeadModel (sdpa) with identical dims, no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2.export import hf_config
    from gpt2.model import GPT, GPTConfig

    torch.manual_seed(0)
    shape = GPTConfig(vocab_size=vocab, seq_len=seq_len, layers=layers, heads=heads, dims=dims, mlp_ratio=4,
                      dropout=0.0)
    ours = GPT(shape)
    hf = GPT2LMHeadModel._from_config(GPT2Config(**hf_config(shape)), attn_implementation="sdpa")
    return ours, hf
