"""Quality per token and per second: our training recipe against a named peer, on the same shards.

The peer is transformers' GPT2LMHeadModel trained by a plain PyTorch loop with the classic
GPT-2/nanoGPT recipe, written here: AdamW lr 6e-4, betas 0.9/0.95, weight decay 0.1 on every
2-D parameter (nanoGPT's grouping), linear warmup over the same fraction of the steps as ours,
then cosine to lr/10, gradient clipping at 1.0. Ours is `gpt2.train.train`, the workflow's own
loop, with its defaults and with each option (train.optimizer, train.schedule).

Every run has the same model shape, token budget, batches (our seeded data order, read by the
peer too), precision and seed. One evaluator scores both models: `gpt2.evaluate.stream_nll`
on the first --valid_tokens of the validation split every --evals-th of the run (the curve),
and `gpt2.evaluate.evaluate` on the whole test split at the end (bits per byte). From the
curves: the tokens and wall seconds each run needs to reach the peer's final validation loss
(linear between evaluations), and each run's validation loss at the peer's wall time.
Medians over the seeds; a table on stdout, JSON in results/bench/quality_<shape>.json.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from common import ROOT, table, write

from gpt2.batches import Batches
from gpt2.checkpoint import load_model
from gpt2.device import autocast, use_bf16
from gpt2.evaluate import evaluate, stream_nll
from gpt2.export import hf_config
from gpt2.model import GPTConfig
from gpt2.params import Architecture, TrainParams
from gpt2.run_state import Outputs
from gpt2.shards import TokenStream
from gpt2.train import model_config, train

SHAPES = {"cpu": Architecture(layers=4, heads=4, dims=256), "small": Architecture()}
# Our options, each on top of TrainParams' defaults; the row whose settings are the defaults is marked.
VARIANTS = {
    "adamw cosine": {"optimizer": "adamw", "schedule": "cosine"},
    "adamw wsd": {"optimizer": "adamw", "schedule": "wsd"},
    "muon cosine": {"optimizer": "muon", "schedule": "cosine"},
    "muon wsd": {"optimizer": "muon", "schedule": "wsd"},
}
PEER = "peer (HF GPT-2, classic AdamW)"


class Curve:
    """(tokens, seconds, validation loss) points of one run, from its start."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float, float]] = []

    def first_reaching(self, target: float) -> tuple[float, float] | None:
        """Tokens and seconds at which the loss first falls to `target` (linear between points), or None."""
        prev = (0, 0.0, math.inf)
        for point in self.points:
            if point[2] <= target:
                if not math.isfinite(prev[2]):
                    return float(point[0]), point[1]
                w = (prev[2] - target) / (prev[2] - point[2])
                return prev[0] + w * (point[0] - prev[0]), prev[1] + w * (point[1] - prev[1])
            prev = point
        return None

    def loss_at_seconds(self, seconds: float) -> float:
        """The loss reached by `seconds` of wall time (the last evaluation before it; the final one after the end)."""
        reached = [loss for _, s, loss in self.points if s <= seconds * (1 + 1e-9)]
        return reached[-1] if reached else math.inf


class Scored(torch.nn.Module):
    """transformers' model seen through our evaluator's interface (`cfg`, `nll`)."""

    def __init__(self, hf, cfg: GPTConfig):
        super().__init__()
        self.hf, self.cfg = hf, cfg

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.hf(x).logits.float()  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")


def valid_loss(model, valid: TokenStream, p: TrainParams, bf16: bool, limit: int) -> float:
    nll, count = stream_nll(model, valid, p.seq_len, p.batch_eval, torch.device("cpu"), limit=limit, bf16=bf16)
    return nll / count


def run_ours(manifest: Path, cfg: GPTConfig, p: TrainParams, workdir: Path) -> tuple[Curve, object]:
    """The workflow's loop; the curve's points are its own periodic evaluations (metrics.csv), timed per step."""
    seconds: dict[int, float] = {}
    start = time.perf_counter()
    train(manifest, Outputs(workdir / "model.pt", workdir / "checkpoints"), cfg, p,
          on_step=lambda step: seconds.__setitem__(step, time.perf_counter() - start))
    curve = Curve()
    with open(workdir / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["eval_loss"]:
                curve.points.append((int(row["tokens"]), seconds[int(row["step"])], float(row["eval_loss"])))
    model, _ = load_model(workdir / "model.pt", torch.device("cpu"))
    return curve, model


def run_peer(manifest: Path, cfg: GPTConfig, p: TrainParams) -> tuple[Curve, Scored]:
    """The classic recipe on transformers' GPT-2, the same batches and evaluations as ours."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(p.seed)
    no_specials = {"bos_token_id": None, "eos_token_id": None}  # GPT-2's 50256 is outside our vocabulary
    hf = GPT2LMHeadModel._from_config(GPT2Config(**hf_config(cfg, no_specials)), attn_implementation="sdpa")
    model = Scored(hf, cfg)
    decay = [w for w in hf.parameters() if w.dim() >= 2]
    plain = [w for w in hf.parameters() if w.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95))
    warmup = max(1, round(p.warmup_ratio * p.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else 0.1 + 0.9 * 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, p.steps - warmup)))))
    batches = Batches(TokenStream(manifest, "train"), p.seq_len, p.batch_tokens // p.seq_len, p.seed)
    valid, bf16 = TokenStream(manifest, "valid"), use_bf16(p.amp, torch.device("cpu"))
    curve, start = Curve(), time.perf_counter()
    for step in range(p.steps):
        ids = batches.host(batches.indices(step), pin=False)
        for micro in ids.split(p.micro_batch):
            x, y = micro[:, :-1], micro[:, 1:]  # (B, T) each
            with autocast(torch.device("cpu"), bf16):
                loss = model.nll(x, y) / y.numel()
            (loss * len(micro) / len(ids)).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % p.eval_every == 0 or step + 1 == p.steps:
            curve.points.append(((step + 1) * p.batch_tokens, time.perf_counter() - start,
                                 valid_loss(model, valid, p, bf16, p.eval_tokens)))
    return curve, model


def run_one(name: str, manifest: Path, arch: Architecture, base: TrainParams, seed: int) -> dict:
    p = replace(base, seed=seed, **VARIANTS.get(name, {}))
    cfg = model_config(manifest, arch, p)
    with tempfile.TemporaryDirectory() as tmp:
        curve, model = run_peer(manifest, cfg, p) if name == PEER else run_ours(manifest, cfg, p, Path(tmp))
    test = TokenStream(manifest, "test")
    bf16 = use_bf16(p.amp, torch.device("cpu"))
    scored = evaluate(model, test, None, test.manifest["splits"]["test"]["bytes"], p.batch_eval,
                      torch.device("cpu"), bf16, 0)
    print(f"{name} seed {seed}: valid {curve.points[-1][2]:.4f} after {curve.points[-1][1]:.0f} s, "
          f"test {scored['bits_per_byte']:.4f} bits/byte", flush=True)
    return {"curve": curve.points, "test_bits_per_byte": scored["bits_per_byte"], "test_loss": scored["loss"]}


def summarise(name: str, runs: list[dict], peer_runs: list[dict], budget: int, default: bool) -> dict:
    """Medians over seeds; each seed's run is compared with the peer's run of the same seed."""
    reach, seconds, at_peer_time = [], [], []
    for run, peer in zip(runs, peer_runs):
        curve, peer_curve = Curve(), Curve()
        curve.points, peer_curve.points = [tuple(x) for x in run["curve"]], [tuple(x) for x in peer["curve"]]
        hit = curve.first_reaching(peer_curve.points[-1][2])
        reach.append(math.inf if hit is None else hit[0])
        seconds.append(math.inf if hit is None else hit[1])
        at_peer_time.append(curve.loss_at_seconds(peer_curve.points[-1][1]))
    tokens = statistics.median(reach)
    return {"run": name + (" (default)" if default else ""),
            "test bits/byte": statistics.median(r["test_bits_per_byte"] for r in runs),
            "valid loss": statistics.median(r["curve"][-1][2] for r in runs),
            "tokens to peer's loss": "not reached" if math.isinf(tokens) else f"{tokens:,.0f}",
            "x peer's tokens": tokens / budget if math.isfinite(tokens) else "-",
            "seconds to peer's loss": statistics.median(seconds),
            "valid loss at peer's time": statistics.median(at_peer_time),
            "wall s": statistics.median(r["curve"][-1][1] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, default=ROOT / "results" / "shards" / "manifest.json")
    parser.add_argument("--shape", choices=list(SHAPES), default="cpu")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch_tokens", type=int, default=2048)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evals", type=int, default=10, help="validation evaluations per run")
    parser.add_argument("--valid_tokens", type=int, default=8192)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.shards.is_file():
        raise SystemExit(f"error: {args.shards} not found: make it with `snakemake --cores 2 {args.shards}` "
                         "or pass --shards")
    torch.set_num_threads(args.threads)
    defaults = TrainParams()
    base = replace(defaults, steps=args.steps, batch_tokens=args.batch_tokens, eval_every=max(1, args.steps // args.evals),
                   eval_tokens=args.valid_tokens, checkpoint_every=args.steps, log_every=max(1, args.steps // args.evals),
                   threads=args.threads)
    names = [PEER, *args.variants]
    runs = {name: [run_one(name, args.shards, SHAPES[args.shape], base, defaults.seed + s)
                   for s in range(args.seeds)] for name in names}
    budget = args.steps * args.batch_tokens
    rows = [summarise(name, runs[name], runs[PEER], budget,
                      name != PEER and all(getattr(defaults, k) == v for k, v in VARIANTS[name].items()))
            for name in names]
    print(f"{args.shape} ({SHAPES[args.shape].layers}L x {SHAPES[args.shape].dims}d, seq {base.seq_len}), "
          f"{args.steps} steps x {args.batch_tokens} tokens = {budget:,} tokens, medians of {args.seeds} seeds, "
          f"validation loss on {args.valid_tokens:,} tokens, test bits/byte on the whole test split")
    print(table(rows, list(rows[0])))
    write(f"quality_{args.shape}", {"settings": vars(args) | {"shards": str(args.shards)}, "rows": rows,
                                    "runs": runs})


if __name__ == "__main__":
    main()
