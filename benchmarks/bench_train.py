"""Training throughput: one optimizer step (forward, backward, AdamW) of this project's GPT vs
transformers' GPT2LMHeadModel (sdpa attention) with identical dims, vocab 8000, seq 128, plus MFU
against this machine's measured matmul peak. Alternating runs; medians of 5 after warm-up."""

from __future__ import annotations

import argparse

import torch
from common import alternate, model_pair, table, write

from gpt2.device import matmul_peak

SHAPES = {"tiny": (2, 2, 64, 32), "small": (12, 12, 768, 8)}  # layers, heads, dims, batch (sequences)


def step_fn(model, ids, bf16: bool, hf: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = ids[:, :-1], ids[:, 1:]

    def step() -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, labels=ids[:, :-1]).loss if hf else model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return x.numel()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows = []
    for shape in args.shapes:
        layers, heads, dims, batch = SHAPES[shape]
        ours, hf = model_pair(layers, heads, dims)
        ids = torch.randint(0, 8000, (batch, 129), generator=torch.Generator().manual_seed(0))
        for precision in args.precisions:
            bf16 = precision == "bf16"
            res = alternate({"ours": step_fn(ours, ids, bf16, False), "hf": step_fn(hf, ids, bf16, True)},
                            repeats=args.repeats)
            flops = ours.flops_per_token()
            mfu = res["ours"]["median"] * flops / peaks[precision]
            rows.append({"shape": shape, "precision": precision, "batch": f"{batch}x128",
                         "ours tok/s": res["ours"]["median"],
                         "ours min-max": f"{res['ours']['min']:,.0f}-{res['ours']['max']:,.0f}",
                         "HF tok/s": res["hf"]["median"],
                         "HF min-max": f"{res['hf']['min']:,.0f}-{res['hf']['max']:,.0f}",
                         "ours/HF": res["ours"]["median"] / res["hf"]["median"],
                         "MFU %": 100 * mfu, "HF MFU %": 100 * res["hf"]["median"] * flops / peaks[precision],
                         "runs": res})
    print(f"measured matmul peak: fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s "
          f"({args.threads} threads)")
    print(table(rows, ["shape", "precision", "batch", "ours tok/s", "ours min-max", "HF tok/s", "HF min-max",
                       "ours/HF", "MFU %", "HF MFU %"]))
    write("train", {"peak_flops": peaks, "rows": rows})


if __name__ == "__main__":
    main()
