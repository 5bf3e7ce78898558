"""GPU measurements beside the workflow's own training (benchmarks/gpu_workflow.sh runs them all).

speed   tokens/s and MFU of one training step (bf16 autocast, torch.compile, fused AdamW, TF32) for
        each --shape MODEL:VOCAB:BATCH at --seq: MODEL is `ours` (gpt2.model.GPT) or `hf`
        (transformers' GPT2LMHeadModel, sdpa attention), GPT-2 small's layers and widths;
        --profile FILE adds torch.profiler's top kernels of the first shape.
memory  peak device memory of eager training steps, small and medium, with and without grad_ckpt.
decode  generation tokens/s of a trained model.pt, batch 1: the KV cache against recomputing
        the whole prefix for each new token.

MFU = tokens/s x (6N + 12 L D T) / peak, N without the position embeddings; the peak is the
device's datasheet dense bf16 figure (gpt2.device.DATASHEET_PEAKS), or a measured fp32 matmul on
the CPU. `--device cpu` with tiny shapes is the smoke run the test suite does."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpt2 import checkpoint  # noqa: E402
from gpt2.device import peak_flops  # noqa: E402
from gpt2.model import GPT, GPTConfig  # noqa: E402
from gpt2.params import MODELS  # noqa: E402

SIZES = {name: (a.layers, a.heads, a.dims) for name, a in MODELS.items()}  # the config's named sizes


def ours(size: str, vocab: int, seq: int) -> GPTConfig:
    layers, heads, dims = SIZES[size]
    return GPTConfig(vocab, seq, layers, heads, dims, mlp_ratio=4, dropout=0.0)


def build(kind: str, size: str, vocab: int, seq: int, device: torch.device) -> torch.nn.Module:
    if kind == "ours":
        return GPT(ours(size, vocab, seq)).to(device)
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2.export import hf_config

    cfg = GPT2Config(**hf_config(ours(size, vocab, seq)))
    return GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa").to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def trainer(kind: str, model: torch.nn.Module, batch: int, seq: int, vocab: int, device: torch.device,
            compiled: bool):
    """A closure running one optimizer step on fixed random ids (data loading is not part of this figure)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    net = torch.compile(model) if compiled else model
    ids = torch.randint(0, vocab, (batch, seq + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = net(x, labels=x).loss if kind == "hf" else net(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` steps after `warmup` untimed ones (where compilation happens)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def flops_per_token(size: str, vocab: int, seq: int) -> int:
    """GPT.flops_per_token of this shape, for transformers' GPT-2 too (the same weights), built on the meta device."""
    with torch.device("meta"):
        return GPT(ours(size, vocab, seq)).flops_per_token()


def speed(args, device: torch.device, peak: float | None, save) -> list[dict]:
    """Each --shape in turn; one that fails (a compile error, say) is recorded and the next one runs."""
    results = []
    for i, shape in enumerate(args.shape):
        kind, vocab, batch = shape.split(":")
        try:
            results.append(speed_of(kind, int(vocab), int(batch), args, device, peak, profile_to=i == 0))
        except Exception as exc:  # noqa: BLE001 -- a one-shot GPU session keeps what it can
            results.append({"model": kind, "vocab": int(vocab), "batch": int(batch), "error": repr(exc)[:500]})
            print(f"{shape}: {exc!r}"[:500], flush=True)
        save(results)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def speed_of(kind: str, vocab: int, batch: int, args, device: torch.device, peak: float | None,
             profile_to: bool) -> dict:
    torch.manual_seed(0)
    model = build(kind, args.size, vocab, args.seq, device)
    step = trainer(kind, model, batch, args.seq, vocab, device, args.compile == "on")
    started = time.perf_counter()
    times = timed(step, device, args.warmup, args.steps)
    median = statistics.median(times)
    tok_s = batch * args.seq / median
    mfu = None if peak is None else tok_s * flops_per_token(args.size, vocab, args.seq) / peak
    print(f"{kind:5s} vocab {vocab:6d} batch {batch:3d}: {tok_s:>12,.0f} tok/s  MFU "
          f"{'n/a' if mfu is None else f'{100 * mfu:.1f} %'}  step {1000 * median:.1f} ms", flush=True)
    if profile_to and args.profile:
        args.profile.write_text(profile(step, device))
    return {"model": kind, "size": args.size, "vocab": vocab, "batch": batch, "seq": args.seq,
            "tokens_per_second": tok_s, "mfu": mfu, "step_ms_median": 1000 * median,
            "step_ms_min": 1000 * min(times), "step_ms_max": 1000 * max(times),
            "warmup_and_timing_s": time.perf_counter() - started}


def profile(step, device: torch.device, steps: int = 3) -> str:
    """torch.profiler's table of the kernels (CUDA) or operators (CPU) that took the most time."""
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=80)


def memory(args, device: torch.device) -> list[dict]:
    """Peak memory of eager bf16 training steps (compile off, so grad_ckpt is the only difference)."""
    results = []
    for size in args.sizes:
        for ckpt in (False, True):
            torch.manual_seed(0)
            model = build("ours", size, args.vocab, args.seq, device)
            model.grad_ckpt = ckpt
            step = trainer("ours", model, args.batch, args.seq, args.vocab, device, compiled=False)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            times = timed(step, device, 1, args.steps)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            results.append({"size": size, "grad_ckpt": ckpt, "batch": args.batch, "seq": args.seq,
                            "peak_gib": peak, "step_ms_median": 1000 * statistics.median(times)})
            print(f"{size:6s} grad_ckpt {str(ckpt):5s} batch {args.batch} x {args.seq}: peak "
                  f"{'n/a' if peak is None else f'{peak:.1f} GiB'}, eager step {results[-1]['step_ms_median']:.0f} ms",
                  flush=True)
            del model, step
    return results


def decode(args, device: torch.device) -> list[dict]:
    """New tokens per second at batch 1, greedy, from a 16-token prompt, with and without the KV cache."""
    model, _ = checkpoint.load_model(args.model_path, device)
    model.eval()
    prompt = torch.randint(0, model.cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)).to(device)
    new = min(args.tokens, model.cfg.seq_len - prompt.shape[1])

    @torch.inference_mode()
    def recompute() -> None:
        out = prompt
        for _ in range(new):
            logits = model(out)[0]
            out = torch.cat([out, logits[:, -1:].argmax(-1)], dim=1)

    runs = {"kv_cache": lambda: model.generate(prompt, new, temperature=0), "recompute": recompute}
    results = []
    for name, fn in runs.items():
        times = timed(fn, device, 1, args.repeats)
        results.append({"method": name, "new_tokens": new, "tokens_per_second": new / statistics.median(times)})
        print(f"generate ({name}): {results[-1]['tokens_per_second']:,.0f} new tokens/s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--shape", action="append", help="MODEL:VOCAB:BATCH (default ours and hf at 50304:16)")
    s.add_argument("--size", default="small", choices=list(SIZES))
    s.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    s.add_argument("--compile", default=None, choices=["on", "off"], help="default: on for CUDA")
    s.add_argument("--profile", type=Path, default=None, help="write the first shape's top kernels here")
    m = sub.add_parser("memory")
    m.add_argument("--sizes", nargs="+", default=["small", "medium"], choices=list(SIZES))
    m.add_argument("--vocab", type=int, default=50304)
    m.add_argument("--batch", type=int, default=16)
    d = sub.add_parser("decode")
    d.add_argument("--model_path", type=Path, required=True)
    d.add_argument("--tokens", type=int, default=256, help="new tokens per generation")
    d.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "command": args.command}

    def save(results: list[dict]) -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({**info, "args": {k: str(v) for k, v in vars(args).items()},
                                            "results": results}, indent=2))

    if args.command == "speed":
        args.shape = args.shape or ["ours:50304:16", "hf:50304:16"]
        args.compile = args.compile or ("on" if device.type == "cuda" else "off")
        peak, info["peak_source"] = peak_flops(device, bf16=device.type == "cuda")
        info["peak_flops"], results = peak, speed(args, device, peak, save)
        by = {(r["vocab"], r["batch"]): r for r in results if r["model"] == "hf" and "error" not in r}
        for r in results:
            if r["model"] == "ours" and "error" not in r and (r["vocab"], r["batch"]) in by:
                r["vs_hf"] = r["tokens_per_second"] / by[r["vocab"], r["batch"]]["tokens_per_second"]
                print(f"ours/HF at vocab {r['vocab']}, batch {r['batch']}: {r['vs_hf']:.2f}")
    else:
        results = memory(args, device) if args.command == "memory" else decode(args, device)
    save(results)


if __name__ == "__main__":
    main()
