"""Evaluation throughput: batched forward passes without gradients (inference mode) of this project's
GPT vs transformers' GPT2LMHeadModel (sdpa) at the same dims, vocab 8000, seq 128, loss included."""

from __future__ import annotations

import argparse

import torch
from common import alternate, model_pair, table, write

SHAPES = {"tiny": (2, 2, 64, 64), "small": (12, 12, 768, 16)}  # layers, heads, dims, batch


def eval_fn(model, ids, hf: bool):
    model.eval()

    @torch.inference_mode()
    def forward() -> int:
        x = ids[:, :-1]
        loss = model(x, labels=x).loss if hf else model(x, ids[:, 1:])[1]
        return x.numel() if torch.isfinite(loss) else 0

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes:
        layers, heads, dims, batch = SHAPES[shape]
        ours, hf = model_pair(layers, heads, dims)
        ids = torch.randint(0, 8000, (batch, 129), generator=torch.Generator().manual_seed(0))
        res = alternate({"ours": eval_fn(ours, ids, False), "hf": eval_fn(hf, ids, True)}, repeats=args.repeats)
        rows.append({"shape": shape, "batch": f"{batch}x128", "ours tok/s": res["ours"]["median"],
                     "ours min-max": f"{res['ours']['min']:,.0f}-{res['ours']['max']:,.0f}",
                     "HF tok/s": res["hf"]["median"], "HF min-max": f"{res['hf']['min']:,.0f}-{res['hf']['max']:,.0f}",
                     "ours/HF": res["ours"]["median"] / res["hf"]["median"], "runs": res})
    print(table(rows, ["shape", "batch", "ours tok/s", "ours min-max", "HF tok/s", "HF min-max", "ours/HF"]))
    write("eval", {"rows": rows})


if __name__ == "__main__":
    main()
