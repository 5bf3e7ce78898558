"""GPU fast path: GPT-2 small (12 layers, 768 dims, vocab 50304) at seq 1024, bf16 autocast,
torch.compile, fused AdamW, TF32 -- tokens/s and MFU against the GPU's dense bf16 peak, this
project's model and transformers' GPT2LMHeadModel (sdpa) in the same run.
`--device cpu --steps 2` is the smoke run the test suite does."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpt2.model import GPT, GPTConfig  # noqa: E402

H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100/H200 SXM


def build(kind: str, vocab: int, seq: int, device: torch.device):
    if kind == "ours":
        cfg = GPTConfig(vocab_size=vocab, seq_len=seq, layers=12, heads=12, dims=768, rate=4, dropout=0.0)
        return GPT(cfg).to(device)
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=768, n_layer=12, n_head=12, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa").to(device)


def measure(kind: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build(kind, args.vocab, args.seq, device)
    params = sum(p.numel() for p in model.parameters()) - 768 * args.seq  # without position embeddings
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    net = torch.compile(model) if args.compile == "on" else model
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = net(x, labels=x).loss if kind == "hf" else net(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    tok_s = args.batch * args.seq / statistics.median(times)
    flops = 6 * params + 12 * 12 * 768 * args.seq
    return {"model": kind, "tokens_per_second": tok_s, "mfu": tok_s * flops / args.peak,
            "step_ms_median": 1000 * statistics.median(times), "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation happens here)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--compile", default=None, choices=["on", "off"], help="default: on for CUDA")
    parser.add_argument("--peak", type=float, default=H200_BF16_PEAK, help="FLOP/s the MFU is relative to")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.compile = args.compile or ("on" if device.type == "cuda" else "off")
    args.bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = [measure("ours", args, device)]
    try:
        results.append(measure("hf", args, device))
    except ImportError:
        print("transformers is not installed: HF row skipped (gpu.sh installs wheels from .whl/)", file=sys.stderr)
    for r in results:
        print(f"{r['model']:5s} {r['tokens_per_second']:>12,.0f} tok/s  MFU {100 * r['mfu']:5.1f} %  "
              f"step {r['step_ms_median']:.1f} ms")
    if len(results) == 2:
        print(f"ours/HF: {results[0]['tokens_per_second'] / results[1]['tokens_per_second']:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                        "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
