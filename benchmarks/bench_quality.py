"""Quality per token and per second: our training recipe against a named peer, on the same shards, each
with its learning rate tuned on validation.

The peer is transformers' GPT2LMHeadModel trained by a plain PyTorch loop with the classic
GPT-2/nanoGPT recipe, written here: AdamW, betas 0.9/0.95, weight decay 0.1 on every 2-D parameter
(nanoGPT's grouping), linear warmup over the same fraction of the steps as ours, then cosine to
lr/10, gradient clipping at 1.0. Ours is `gpt2.train.train`, the workflow's own loop, in the
recipes of train.optimizer x train.schedule (adamw cosine: GPT-2's; muon wsd: the default).

Fair to the peer: each arm's learning rate is swept (the peer's and our AdamW's lr over --lrs,
Muon's muon_lr over --muon_lrs) on the first seed, and the lowest final *validation* loss picks it;
the test split is read only by the final score, never by a choice. Both start from the train split's
unigram prior (train.init_prior, `gpt2.model.output_prior` on the peer's weights) or, with
--no_prior, neither does. Both run on one device (--device) in one precision, compiled alike.

Every run has the same model shape, token budget, batches (our seeded data order, read by the
peer too) and seed. One evaluator scores both models: `gpt2.evaluate.stream_nll` on the first
--valid_tokens of the validation split every --evals-th of the run (the curve), and
`gpt2.evaluate.evaluate` on the whole test split at the end (bits per byte). From the curves:
the tokens and wall seconds each arm needs to reach a reference arm's final validation loss
(linear between evaluations), and its validation loss at the reference's wall time, against the
tuned peer and against our tuned AdamW + cosine. Medians over the seeds at the chosen lrs; tables
on stdout, JSON in results/bench/quality_<shape>.json.
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
from gpt2.device import autocast, resolve_device, use_bf16
from gpt2.evaluate import evaluate, stream_nll, unigram_logprobs
from gpt2.export import hf_config
from gpt2.model import GPTConfig, output_prior
from gpt2.params import Architecture, TrainParams
from gpt2.optim import lr_factor
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
REFERENCES = (PEER, "adamw cosine")  # the arms the others are measured against, where they ran


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

    forward = nll  # what torch.compile wraps


def valid_loss(model, valid: TokenStream, p: TrainParams, device: torch.device, bf16: bool, limit: int) -> float:
    nll, count = stream_nll(model, valid, p.seq_len, p.batch_eval, device, limit=limit, bf16=bf16)
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
    model, _ = load_model(workdir / "model.pt", resolve_device(p.device))
    return curve, model


def run_peer(manifest: Path, cfg: GPTConfig, p: TrainParams) -> tuple[Curve, Scored]:
    """The classic recipe on transformers' GPT-2 at lr p.lr: the same batches, start, device, precision,
    compilation and evaluations as ours."""
    from transformers import GPT2Config, GPT2LMHeadModel

    device = resolve_device(p.device)
    torch.manual_seed(p.seed)
    no_specials = {"bos_token_id": None, "eos_token_id": None}  # GPT-2's 50256 is outside our vocabulary
    hf = GPT2LMHeadModel._from_config(GPT2Config(**hf_config(cfg, no_specials)), attn_implementation="sdpa")
    batches = Batches(TokenStream(manifest, "train"), p.seq_len, p.batch_tokens // p.seq_len, p.seed)
    if p.init_prior:  # the unigram start ours has (train.init_prior)
        output_prior(hf.transformer.wte.weight, hf.transformer.ln_f.bias,
                     torch.from_numpy(unigram_logprobs(batches.stream, cfg.vocab_size)))
    hf.to(device)
    model = Scored(hf, cfg)
    net = torch.compile(model) if p.compile == "on" or (p.compile == "auto" and device.type == "cuda") else model
    decay = [w for w in hf.parameters() if w.dim() >= 2]
    plain = [w for w in hf.parameters() if w.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
                            lr=p.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, replace(p, schedule="cosine")))
    valid, bf16 = TokenStream(manifest, "valid"), use_bf16(p.amp, device)
    curve, start = Curve(), time.perf_counter()
    for step in range(p.steps):
        ids = batches.host(batches.indices(step), pin=False).to(device)
        for micro in ids.split(p.micro_batch):
            x, y = micro[:, :-1], micro[:, 1:]  # (B, T) each
            with autocast(device, bf16):
                loss = net(x, y) / y.numel()
            (loss * len(micro) / len(ids)).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % p.eval_every == 0 or step + 1 == p.steps:
            curve.points.append(((step + 1) * p.batch_tokens, time.perf_counter() - start,
                                 valid_loss(model, valid, p, device, bf16, p.eval_tokens)))
    return curve, model


def run_one(name: str, manifest: Path, arch: Architecture, p: TrainParams) -> dict:
    """One run of an arm at p's seed and lr (muon_lr); its curve, test score and settings."""
    p = replace(p, **VARIANTS.get(name, {}))
    cfg = model_config(manifest, arch, p)
    with tempfile.TemporaryDirectory() as tmp:
        curve, model = run_peer(manifest, cfg, p) if name == PEER else run_ours(manifest, cfg, p, Path(tmp))
    test, device = TokenStream(manifest, "test"), resolve_device(p.device)
    scored = evaluate(model, test, None, test.manifest["splits"]["test"]["bytes"], p.batch_eval, device,
                      use_bf16(p.amp, device), 0)
    print(f"{name} seed {p.seed} {swept(name)} {getattr(p, swept(name)):g}: valid {curve.points[-1][2]:.4f} "
          f"after {curve.points[-1][1]:.0f} s, test {scored['bits_per_byte']:.4f} bits/byte", flush=True)
    return {"seed": p.seed, swept(name): getattr(p, swept(name)), "curve": curve.points,
            "test_bits_per_byte": scored["bits_per_byte"], "test_loss": scored["loss"]}


def swept(name: str) -> str:
    """The setting an arm's sweep moves: Muon's muon_lr (its AdamW part keeps train.lr), else lr."""
    return "muon_lr" if VARIANTS.get(name, {}).get("optimizer") == "muon" else "lr"


def tune(name: str, manifest: Path, arch: Architecture, base: TrainParams, grid: list[float],
         seeds: list[int], extend: int = 2) -> dict:
    """The arm's grid on the first seed, the lowest final validation loss chosen, the other seeds at it. A best
    value at the grid's edge is not a tuned one: the grid grows past that edge (x2 or /2) up to `extend` times."""
    run = lambda value: run_one(name, manifest, arch, replace(base, seed=seeds[0], **{swept(name): value}))
    sweep = [run(value) for value in sorted(grid)]
    loss = lambda r: r["curve"][-1][2]
    for _ in range(extend):
        best = min(sweep, key=loss)
        if best is sweep[-1] and len(sweep) > 1:
            sweep.append(run(best[swept(name)] * 2))
        elif best is sweep[0] and len(sweep) > 1:
            sweep.insert(0, run(best[swept(name)] / 2))
        else:
            break
    best = min(sweep, key=loss)
    value, edge = best[swept(name)], len(sweep) > 1 and best in (sweep[0], sweep[-1])
    runs = [best] + [run_one(name, manifest, arch, replace(base, seed=seed, **{swept(name): value}))
                     for seed in seeds[1:]]
    return {"setting": swept(name), "chosen": value, "edge": edge, "sweep": sweep, "runs": runs}


def _curve(run: dict) -> Curve:
    curve = Curve()
    curve.points = [tuple(x) for x in run["curve"]]
    return curve


def against(runs: list[dict], reference: list[dict], budget: int) -> dict:
    """Medians over seeds of each run against the reference's run of the same seed: the share of the budget
    it needs to reach the reference's final validation loss, the seconds it takes, its loss at the
    reference's wall time."""
    tokens, seconds, at_time = [], [], []
    for run, ref in zip(runs, reference):
        mine, theirs = _curve(run), _curve(ref)
        hit = mine.first_reaching(theirs.points[-1][2])
        tokens.append(math.inf if hit is None else hit[0] / budget)
        seconds.append(math.inf if hit is None else hit[1])
        at_time.append(mine.loss_at_seconds(theirs.points[-1][1]))
    share = statistics.median(tokens)
    return {"x tokens": share if math.isfinite(share) else "not reached", "s to its loss": statistics.median(seconds),
            "valid at its time": statistics.median(at_time)}


def summarise(name: str, arm: dict, arms: dict, budget: int, default: bool) -> dict:
    runs = arm["runs"]
    row = {"run": name + (" (default)" if default else ""), "tuned": f"{arm['setting']} {arm['chosen']:g}",
           "test bits/byte": statistics.median(r["test_bits_per_byte"] for r in runs),
           "valid loss": statistics.median(r["curve"][-1][2] for r in runs),
           "wall s": statistics.median(r["curve"][-1][1] for r in runs)}
    for ref in REFERENCES:
        if ref in arms and ref != name:
            short = "peer" if ref == PEER else ref
            row |= {f"{k} vs {short}": v for k, v in against(runs, arms[ref]["runs"], budget).items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, default=ROOT / "results" / "shards" / "manifest.json")
    parser.add_argument("--shape", choices=list(SHAPES), default="cpu")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch_tokens", type=int, default=2048)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evals", type=int, default=10, help="validation evaluations per run")
    parser.add_argument("--valid_tokens", type=int, default=8192)
    parser.add_argument("--variants", nargs="+", default=["adamw cosine", "muon wsd"], choices=list(VARIANTS))
    parser.add_argument("--lrs", type=float, nargs="+", default=[6e-4, 1.5e-3, 3e-3],
                        help="the lr grid of the peer and our AdamW arms")
    parser.add_argument("--muon_lrs", type=float, nargs="+", default=[0.01, 0.02, 0.04],
                        help="the muon_lr grid of our Muon arms")
    parser.add_argument("--no_prior", action="store_true", help="neither arm starts at the unigram prior")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.shards.is_file():
        raise SystemExit(f"error: {args.shards} not found: make it with `snakemake --cores 2 {args.shards}` "
                         "or pass --shards")
    torch.set_num_threads(args.threads)
    defaults = TrainParams()
    every = max(1, args.steps // args.evals)
    base = replace(defaults, steps=args.steps, batch_tokens=args.batch_tokens, eval_every=every, log_every=every,
                   eval_tokens=args.valid_tokens, checkpoint_every=args.steps, threads=args.threads,
                   device=args.device, init_prior=not args.no_prior)
    seeds = [defaults.seed + s for s in range(args.seeds)]
    names = [PEER, *args.variants]
    arms = {name: tune(name, args.shards, SHAPES[args.shape], base,
                       args.muon_lrs if swept(name) == "muon_lr" else args.lrs, seeds) for name in names}
    budget = args.steps * args.batch_tokens
    sweep_rows = [{"run": name, "setting": arm["setting"], "value": f"{run[arm['setting']]:g}",
                   f"valid loss (seed {seeds[0]})": run["curve"][-1][2], "test bits/byte": run["test_bits_per_byte"],
                   "chosen": ("yes (still the grid's edge)" if arm["edge"] else "yes")
                   if run[arm["setting"]] == arm["chosen"] else ""}
                  for name, arm in arms.items() for run in arm["sweep"]]
    rows = [summarise(name, arms[name], arms, budget,
                      name != PEER and all(getattr(defaults, k) == v for k, v in VARIANTS[name].items()))
            for name in names]
    device = resolve_device(args.device)
    print(f"{args.shape} ({SHAPES[args.shape].layers}L x {SHAPES[args.shape].dims}d, seq {base.seq_len}), "
          f"{args.steps} steps x {args.batch_tokens} tokens = {budget:,} tokens on {device} "
          f"({'bf16' if use_bf16(base.amp, device) else 'fp32'}), unigram start: {base.init_prior}; each arm's lr "
          f"chosen on the validation loss of seed {seeds[0]}, medians of {args.seeds} seeds at it; validation "
          f"loss on {args.valid_tokens:,} tokens, test bits/byte on the whole test split")
    print(table(sweep_rows, list(sweep_rows[0])))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    vs = [f" vs {'peer' if ref == PEER else ref}" for ref in REFERENCES]
    print(table(rows, [c for c in columns if not c.endswith(tuple(vs))] + [c for v in vs for c in columns
                                                                          if c.endswith(v)]))
    write(f"quality_{args.shape}", {"settings": vars(args) | {"shards": str(args.shards)}, "sweep": sweep_rows,
                                    "rows": rows, "arms": arms})


if __name__ == "__main__":
    main()
