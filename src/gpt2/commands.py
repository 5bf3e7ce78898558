"""The reference GPT-2 repo's commands -- train, evaluate, generate, visualize -- plus export.

Flag names and defaults follow the reference (`--total_steps 1000000`,
`--base_lr 1e-4`, `--seq_len 64`, ...), so its run_train.sh / run_eval.sh keep
working; this project's own names (`--steps`, `--lr`, ...) are accepted as
aliases, and the Snakemake rules call the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import fields
from pathlib import Path

from gpt2 import UserError


def boolean(text: str) -> bool:
    """true/false (also yes/no, on/off, 1/0)."""
    value = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def switch(text: str) -> str:
    """auto / on / off (true/false and yes/no too, as YAML writes them)."""
    if text.lower() == "auto":
        return "auto"
    try:
        return "on" if boolean(text) else "off"
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}") from None


def existing(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return path


# --- corpora: expanda text files or this project's shards ----------------------


def resolve_shards(train_corpus: Path | None, eval_corpus: Path, vocab_path: Path | None, workdir: Path) -> Path:
    """A shards manifest for the corpora: as given, or made from expanda's text files into `workdir`."""
    if eval_corpus.suffix == ".json":
        return eval_corpus
    if vocab_path is None:
        raise UserError("--vocab_path is needed with text corpora (expanda's vocab.txt)")
    from gpt2.shards import make_shards

    make_shards(vocab_path, train_corpus or eval_corpus, eval_corpus, workdir, shard_tokens=50_000_000)
    return workdir / "manifest.json"


# --- train -------------------------------------------------------------------------

# TrainConfig field -> (reference flag, this project's alias, reference default or None, help)
TRAIN_FLAGS = {
    "steps": ("--total_steps", "--steps", 1_000_000, "optimizer steps in total"),
    "batch_tokens": ("--batch_tokens", None, None,
                     "global batch per step in tokens; gradient accumulation fills it (0: no accumulation)"),
    "micro_batch": ("--batch_train", "--micro_batch", 64, "sequences per forward pass per process"),
    "batch_eval": ("--batch_eval", None, 64, "sequences per forward pass in evaluation"),
    "lr": ("--base_lr", "--lr", 1e-4, "peak learning rate"),
    "min_lr_ratio": ("--min_lr_ratio", None, None, "cosine decay ends at lr x this"),
    "warmup_steps": ("--warmup_steps", None, None, "linear warmup steps"),
    "weight_decay": ("--wd_rate", "--weight_decay", 1e-2, "AdamW weight decay (not on norms, biases, embeddings)"),
    "beta1": ("--beta1", None, None, "AdamW beta1"),
    "beta2": ("--beta2", None, None, "AdamW beta2"),
    "grad_clip": ("--grad_clip", None, None, "clip the global gradient norm to this"),
    "seed": ("--seed", None, None, "seed of initialisation, data order and dropout"),
    "eval_every": ("--eval_steps", "--eval_every", 500, "evaluate on the held-out slice every N steps"),
    "eval_tokens": ("--eval_tokens", None, None, "tokens in the held-out slice (start of the eval corpus)"),
    "log_every": ("--log_every", None, None, "write a metrics.csv row every N steps"),
    "checkpoint_every": ("--save_steps", "--checkpoint_every", 1000, "checkpoint every N steps"),
    "keep_checkpoints": ("--keep_checkpoints", None, None, "newest checkpoints kept"),
    "compile": ("--compile", None, None, "torch.compile: auto (on for CUDA), on, off"),
    "grad_ckpt": ("--grad_ckpt", None, None, "activation checkpointing: true/false (or --use_grad_ckpt)"),
    "amp": ("--amp", None, None, "bf16 autocast: auto (CUDA, and CPUs with native bf16), on, off "
                                 "(--use_amp = on)"),
}


def _add_architecture(p: argparse.ArgumentParser, required_defaults: bool) -> None:
    """--seq_len/--layers/... with the reference defaults (train), or None = read from the checkpoint."""
    for flag, default, text in (("--seq_len", 64, "context length in tokens"), ("--layers", 12, "blocks"),
                                ("--heads", 16, "attention heads"), ("--dims", 1024, "hidden size"),
                                ("--rate", 4, "MLP width = rate x dims")):
        if required_defaults:
            p.add_argument(flag, type=int, default=default, help=f"{text} (default {default})")
        else:
            p.add_argument(flag, type=int, default=None, help=f"{text}; checked against the checkpoint")


def add_train(sub: argparse._SubParsersAction) -> None:
    from gpt2.train import TrainConfig

    p = sub.add_parser("train", help="train (or resume) a GPT-2", description=(
        "Train a GPT-2 on expanda's corpus files or this project's shards. Re-running the same command resumes "
        "from the newest checkpoint in --save_checkpoint_path."))
    p.add_argument("--train_corpus", type=existing, help="expanda's corpus.train.txt, or a shards manifest.json")
    p.add_argument("--eval_corpus", "--shards", type=existing, required=True,
                   help="expanda's corpus.test.txt, or a shards manifest.json (its train and test splits)")
    p.add_argument("--vocab_path", type=existing, help="expanda's vocab.txt (needed with text corpora)")
    _add_architecture(p, required_defaults=True)
    p.add_argument("--dropout", type=float, default=0.1, help="dropout rate (default 0.1)")
    for f in fields(TrainConfig):
        flag, alias, default, text = TRAIN_FLAGS[f.name]
        default = f.default if default is None else default
        kind = boolean if isinstance(f.default, bool) else switch if f.default == "auto" else type(f.default)
        names = [flag] + ([alias] if alias else [])
        p.add_argument(*names, dest=f.name, type=kind, default=default, help=f"{text} (default {default})")
    p.add_argument("--use_amp", dest="amp", action="store_const", const="on", help="same as --amp on")
    p.add_argument("--use_grad_ckpt", dest="grad_ckpt", action="store_true", help="same as --grad_ckpt true")
    p.add_argument("--save_model_path", type=Path, default=Path("model.pt"),
                   help="final model (default model.pt); metrics.csv is written beside it")
    p.add_argument("--save_checkpoint_path", type=Path, default=None,
                   help="checkpoint folder (default: checkpoints/ beside the model)")
    p.add_argument("--from_checkpoint", type=existing, help="resume from this checkpoint file")
    p.add_argument("--from_pretrained", type=existing, help="start from the weights of this model.pt")
    p.add_argument("--gpus", type=int, default=0, help="train on N GPUs with DDP (torchrun); 0: no GPU needed")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--stop_after", type=int, default=None, help=argparse.SUPPRESS)  # crash simulation in tests
    p.set_defaults(func=run_train)


def _relaunch_under_torchrun(gpus: int) -> None:
    """--gpus N > 1 outside torchrun: become `torchrun --standalone --nproc_per_node N -m gpt2 ...`."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    os.execv(torchrun, [torchrun, "--standalone", "--nproc_per_node", str(gpus), "-m", "gpt2", *sys.argv[1:]])


def run_train(args: argparse.Namespace) -> None:
    import torch

    from gpt2.model import GPTConfig
    from gpt2.train import Outputs, TrainConfig, train

    if args.gpus:
        if torch.cuda.device_count() < args.gpus:
            raise UserError(f"--gpus {args.gpus}, but torch sees {torch.cuda.device_count()} CUDA device(s); "
                            "leave --gpus out to train on the CPU")
        if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
            _relaunch_under_torchrun(args.gpus)
        args.device = "cuda"
    checkpoints = args.save_checkpoint_path or args.save_model_path.parent / "checkpoints"
    manifest = resolve_shards(args.train_corpus, args.eval_corpus, args.vocab_path, checkpoints / "shards")
    from gpt2.shards import TokenStream

    vocab_size = TokenStream(manifest, "test").manifest["vocab_size"]
    try:
        model_cfg = GPTConfig(vocab_size, args.seq_len, args.layers, args.heads, args.dims, args.rate, args.dropout)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    train(manifest, Outputs(args.save_model_path, checkpoints), model_cfg, cfg, device=args.device,
          threads=args.threads, stop_after=args.stop_after, resume_from=args.from_checkpoint,
          init_from=args.from_pretrained)


# --- evaluate, generate ------------------------------------------------------------------


def _add_model_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_path", type=existing, required=True, help="model.pt written by train")
    _add_architecture(p, required_defaults=False)
    p.add_argument("--use_gpu", action="store_true", help="run on CUDA")


def architecture_flags(args: argparse.Namespace) -> dict:
    """The dims the user named on the command line; the checkpoint must agree with them."""
    return {k: getattr(args, k) for k in ("seq_len", "layers", "heads", "dims", "rate") if getattr(args, k)}


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test loss, perplexity and the unigram baseline as JSON")
    _add_model_source(p)
    p.add_argument("--eval_corpus", "--shards", type=existing, required=True,
                   help="expanda's corpus.test.txt, or a shards manifest.json")
    p.add_argument("--train_corpus", type=existing,
                   help="with a text eval corpus: expanda's corpus.train.txt, for the unigram baseline")
    p.add_argument("--vocab_path", type=existing, help="expanda's vocab.txt (needed with text corpora)")
    p.add_argument("--batch_eval", type=int, default=64, help="sequences per forward pass (default 64)")
    p.add_argument("--total_steps", type=int, default=-1, help="evaluate only this many batches (-1: all)")
    p.add_argument("--output", type=Path, default=None, help="also write the JSON report here")
    p.add_argument("--name", default="", help="model name in the report (default: the model's folder)")
    p.add_argument("--amp", type=switch, default="auto",
                   help="bf16 autocast: auto (CUDA, and CPUs with native bf16), on, off")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> None:
    import tempfile

    from gpt2.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        manifest = resolve_shards(args.train_corpus, args.eval_corpus, args.vocab_path, Path(tmp) / "shards")
        report = evaluate(args.model_path, manifest, args.output, args.name or args.model_path.parent.name,
                          batch=args.batch_eval, device="cuda" if args.use_gpu else "auto", amp=args.amp,
                          threads=args.threads, max_batches=args.total_steps, expect=architecture_flags(args),
                          baseline=args.eval_corpus.suffix == ".json" or args.train_corpus is not None)
    print(json.dumps(report, indent=2))


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="complete prompts (interactive without --prompt)")
    _add_model_source(p)
    p.add_argument("--vocab_path", type=existing, required=True, help="expanda's vocab.txt")
    p.add_argument("--nucleus_prob", type=float, default=0.85, help="top-p of nucleus sampling (default 0.85)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top_k", type=int, default=0, help="sample among the k likeliest tokens (0: off)")
    p.add_argument("--max_tokens", type=int, default=64, help="new tokens at most (default 64)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several); none: read stdin lines")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> None:
    import torch

    from gpt2.evaluate import check_architecture, load_model
    from gpt2.generate import complete, load_tokenizer

    if not 0 < args.nucleus_prob <= 1:
        raise UserError(f"--nucleus_prob {args.nucleus_prob} must be in (0, 1]")
    model, _ = load_model(args.model_path, torch.device("cuda" if args.use_gpu else "cpu"))
    check_architecture(model.cfg, architecture_flags(args), args.model_path)
    tokenizer = load_tokenizer(args.vocab_path)

    def answer(prompt: str, i: int) -> str:
        return complete(model, tokenizer, prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.nucleus_prob, seed=args.seed + i)

    if args.prompt:
        for i, prompt in enumerate(args.prompt):
            print(answer(prompt, i))
        return
    interactive = sys.stdin.isatty()
    for i, line in enumerate(iter(lambda: input(">> ") if interactive else sys.stdin.readline(), "")):
        prompt = line.strip()
        if prompt in ("exit", "quit"):
            break
        if prompt:
            print(answer(prompt, i), flush=True)


# --- visualize, export -------------------------------------------------------------------


def add_visualize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="the four-panel loss figure of a training run")
    p.add_argument("--model_path", type=existing, required=True,
                   help="model.pt (or its folder): metrics.csv beside it is plotted")
    p.add_argument("--figure", type=Path, default=Path("figure.png"), help="output image (default figure.png)")
    p.add_argument("--interactive", action="store_true", help="also show the figure in a window")
    p.set_defaults(func=run_visualize)


def run_visualize(args: argparse.Namespace) -> None:
    from gpt2.report import loss_figure, read_metrics, save

    folder = args.model_path if args.model_path.is_dir() else args.model_path.parent
    metrics = next((p for p in (folder / "metrics.csv", folder / "checkpoints" / "metrics.csv") if p.exists()), None)
    if metrics is None:
        raise UserError(f"no metrics.csv beside {args.model_path}: point --model_path at a trained model")
    fig = loss_figure(read_metrics(metrics), str(folder))
    if args.interactive:
        import matplotlib.pyplot as plt

        try:
            plt.switch_backend("TkAgg")
        except Exception:
            raise UserError("--interactive needs a display and Tk; the figure is still written") from None
        plt.show()
    save(fig, args.figure)
    print(f"wrote {args.figure}", file=sys.stderr)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a Hugging Face transformers directory (GPT2LMHeadModel + tokenizer)")
    p.add_argument("--model_path", type=existing, required=True, help="model.pt written by train")
    p.add_argument("--vocab_path", type=existing, required=True, help="expanda's vocab.txt")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> None:
    from gpt2.export import export_hf

    export_hf(args.model_path, args.vocab_path, args.out)


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    for add in (add_train, add_evaluate, add_generate, add_visualize, add_export):
        add(sub)
