"""The reference repo's commands: train / evaluate / generate / visualize, export to transformers, scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, gpt2
from gpt2.params import TrainParams, settings
from gpt2.evaluate import windows
from gpt2.shards import TokenStream

REFERENCE_TRAIN_FLAGS = ["--train_corpus", "--eval_corpus", "--vocab_path", "--seq_len", "--layers", "--heads",
                         "--dims", "--rate", "--dropout", "--batch_train", "--batch_eval", "--base_lr", "--wd_rate",
                         "--total_steps", "--eval_steps", "--save_steps", "--save_model_path",
                         "--save_checkpoint_path", "--from_checkpoint", "--from_pretrained", "--use_amp",
                         "--use_grad_ckpt", "--gpus"]
TINY = ["--reference_defaults", "--seq_len", "32", "--layers", "2", "--heads", "2", "--dims", "32", "--batch_train", "16", "--base_lr",
        "3e-3", "--warmup_ratio", "0.25", "--eval_steps", "10", "--save_steps", "10", "--eval_tokens", "1024",
        "--log_every", "5", "--threads", "2", "--amp", "off"]


@pytest.fixture(scope="module")
def corpus(tiny_run) -> dict[str, Path]:
    c = tiny_run / "results/corpus"
    return {"train": c / "corpus.train.txt", "test": c / "corpus.test.txt", "vocab": c / "vocab.txt",
            "manifest": tiny_run / "results/shards/manifest.json", "model": tiny_run / "results/train/tiny/model.pt",
            "eval": tiny_run / "results/eval_tiny.json", "info": tiny_run / "resources/dumps/enwiki-sample/dump.json"}


@pytest.fixture(scope="module")
def text_run(corpus, tmp_path_factory) -> Path:
    """A run on expanda's text files with the reference flags."""
    out = tmp_path_factory.mktemp("text_run")
    proc = gpt2("train", "--train_corpus", str(corpus["train"]), "--eval_corpus", str(corpus["test"]),
                "--vocab_path", str(corpus["vocab"]), "--save_model_path", str(out / "model.pth"),
                "--save_checkpoint_path", str(out / "ckpt"), "--total_steps", "20", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_help_documents_every_reference_flag():
    help_text = gpt2("train", "--help").stdout
    for flag in REFERENCE_TRAIN_FLAGS:
        assert flag in help_text, flag
    for f in settings(TrainParams, ("both", "cli")):  # every setting under its own name and its aliases
        assert all(flag.split("=")[0] in help_text for flag in (f"--{f.name}", *f.metadata["aliases"])), f.name
    for command, flags in (("evaluate", ["--model_path", "--eval_corpus", "--vocab_path", "--seq_len", "--layers",
                                         "--heads", "--dims", "--rate", "--batch_eval", "--total_steps",
                                         "--use_gpu", "--output"]),
                           ("generate", ["--vocab_path", "--model_path", "--nucleus_prob", "--use_gpu", "--prompt",
                                         "--max_tokens", "--temperature", "--top_k", "--seed"]),
                           ("visualize", ["--model_path", "--figure", "--interactive"]),
                           ("export", ["--model_path", "--vocab_path", "--out"])):
        text = gpt2(command, "--help").stdout
        assert all(flag in text for flag in flags), command


def test_train_on_text_corpora_with_reference_flags(text_run):
    assert (text_run / "model.pth").is_file() and (text_run / "metrics.csv").is_file()
    assert (text_run / "ckpt/shards/manifest.json").is_file()  # text files were sharded once
    state = torch.load(text_run / "model.pth", weights_only=True)
    assert state["model_config"]["dropout"] == 0.1  # the reference default
    assert state["train_config"]["lr"] == 3e-3 and state["step"] == 20


def test_from_checkpoint_and_from_pretrained(text_run, corpus, tmp_path):
    common = ["--eval_corpus", str(corpus["manifest"]), "--total_steps", "20", *TINY]
    checkpoint = sorted((text_run / "ckpt").glob("step_*.pt"))[0]
    proc = gpt2("train", *common, "--from_checkpoint", str(checkpoint), "--save_model_path", str(tmp_path / "a.pt"))
    assert proc.returncode == 0 and f"resuming from {checkpoint}" in proc.stderr
    proc = gpt2("train", *common, "--from_pretrained", str(text_run / "model.pth"), "--save_model_path",
                str(tmp_path / "b/model.pt"))
    assert proc.returncode == 0 and "initialised from" in proc.stderr, proc.stderr[-1000:]
    proc = gpt2("train", *common, "--dims", "64", "--from_pretrained", str(text_run / "model.pth"),
                "--save_model_path", str(tmp_path / "c/model.pt"))
    assert proc.returncode == 2 and "its architecture" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize("args, message", [
    (["train"], "one of the arguments --shards --eval_corpus is required"),
    (["train", "--eval_corpus", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt: no such file"),
    (["train", "--eval_corpus", "{manifest}", "--total_steps", "ten"], "invalid int value: 'ten'"),
    (["train", "--eval_corpus", "{test}"], "error: --vocab_path is needed with text corpora"),
    (["train", "--eval_corpus", "{test}", "--vocab_path", "{vocab}"],
     "error: --train_corpus is needed with a text --eval_corpus: without it, training would train on"),
    (["train", "--eval_corpus", "{manifest}", "--heads", "5"], "error: dims (768) must be divisible by heads (5)"),
    (["train", "--eval_corpus", "{manifest}", "--gpus", "2"], "error: --gpus 2, but torch sees 0 CUDA device(s)"),
    (["train", "--eval_corpus", "{manifest}", "--use_grad_ckpt", "--amp", "maybe"], "expected auto, on or off"),
    (["evaluate", "--eval_corpus", "{manifest}"], "one of the arguments --model_path --hf is required"),
    (["evaluate", "--model_path", "{model}", "--eval_corpus", "{manifest}", "--dims", "128"],
     "error: --dims 128 does not match the checkpoint's 64"),
    (["evaluate", "--model_path", "{vocab}", "--eval_corpus", "{manifest}"], "not a loadable checkpoint"),
    (["generate", "--model_path", "{model}", "--vocab_path", "{vocab}", "--nucleus_prob", "1.5"],
     "error: --top_p (--nucleus_prob) 1.5 is out of range (must be <= 1)"),
    (["train", "--shards", "{manifest}", "--steps", "0"],
     "error: --steps (--total_steps) 0 is out of range (must be >= 1)"),
    (["generate", "--model_path", "{model}"], "the following arguments are required: --vocab_path"),
    (["visualize", "--model_path", "{vocab}"], "error: no metrics.csv beside"),
    (["export", "--model_path", "{model}", "--vocab_path", "/nope", "--out", "x"], "/nope: no such file"),
])
@pytest.mark.reliability
def test_bad_flags_are_one_clear_error(corpus, args, message):
    if "--gpus" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = gpt2(*[a.format(**{k: str(v) for k, v in corpus.items()}) for a in args])
    assert proc.returncode == 2
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-1500:]


def test_evaluate_prints_and_writes_the_report(corpus, tmp_path):
    out = tmp_path / "eval.json"
    proc = gpt2("evaluate", "--model_path", str(corpus["model"]), "--eval_corpus", str(corpus["manifest"]),
                "--dims", "64", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-1000:]
    printed = json.loads(proc.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["perplexity"] < printed["unigram_perplexity"]
    partial = json.loads(gpt2("evaluate", "--model_path", str(corpus["model"]), "--eval_corpus",
                              str(corpus["manifest"]), "--batch_eval", "4", "--total_steps", "2").stdout)
    assert partial["eval_tokens"] == 2 * 4 * 128  # two batches of four 128-token windows
    text = json.loads(gpt2("evaluate", "--model_path", str(corpus["model"]), "--eval_corpus", str(corpus["test"]),
                           "--vocab_path", str(corpus["vocab"])).stdout)
    lines = corpus["test"].read_text(encoding="utf-8").splitlines()  # a text corpus: each line one document
    assert text["eval_tokens"] == sum(len(line.split()) + 1 for line in lines) - 1
    assert text["unigram_perplexity"] is None and text["bits_per_byte"] is None  # no train split, no raw text


def test_generate_is_seeded_and_interactive(corpus):
    args = ["generate", "--model_path", str(corpus["model"]), "--vocab_path", str(corpus["vocab"]),
            "--max_tokens", "12", "--seed", "3"]
    first = gpt2(*args, "--prompt", "The history of", "--prompt", "In 1990,")
    again = gpt2(*args, "--prompt", "The history of", "--prompt", "In 1990,")
    assert first.returncode == 0 and first.stdout == again.stdout
    lines = first.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("the history of") and lines[1].startswith("in 1990,")
    assert "##" not in first.stdout  # WordPiece pieces are joined back into words
    greedy = gpt2(*args, "--temperature", "0", "--prompt", "The history of").stdout
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    interactive = subprocess.run([sys.executable, "-m", "gpt2", *args, "--temperature", "0"],
                                 input="\nThe history of\nexit\n", capture_output=True, text=True, env=env)
    assert interactive.returncode == 0 and interactive.stdout == greedy  # an empty line asks again
    # at a terminal: a prompt, an empty line, another prompt, then Ctrl-D ends it cleanly
    main, terminal = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gpt2", *args, "--temperature", "0"], stdin=terminal,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    os.write(main, b"The history of\n\nThe history of\n\x04")
    out, err = proc.communicate(timeout=120)
    os.close(main), os.close(terminal)
    assert proc.returncode == 0 and "Traceback" not in err and out.count(greedy.strip()) == 2


def test_text_corpora_are_sharded_once_and_reused(text_run, corpus):
    """Re-running the same command resumes; the shards of the text files are not made again."""
    shard = next((text_run / "ckpt/shards/train").glob("*.bin"))
    before = shard.stat().st_mtime_ns
    proc = gpt2("train", "--train_corpus", str(corpus["train"]), "--eval_corpus", str(corpus["test"]),
                "--vocab_path", str(corpus["vocab"]), "--save_model_path", str(text_run / "model.pth"),
                "--save_checkpoint_path", str(text_run / "ckpt"), "--total_steps", "20", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reusing the shards" in proc.stderr and "sharded" not in proc.stderr
    assert shard.stat().st_mtime_ns == before


@pytest.mark.reliability
def test_visualize_without_a_display_still_writes_the_figure(text_run, tmp_path):
    figure = tmp_path / "figure.png"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "gpt2", "visualize", "--model_path", str(text_run / "model.pth"),
                           "--figure", str(figure), "--interactive"], capture_output=True, text=True,
                          env=dict(env, PYTHONPATH=str(ROOT / "src")))
    assert proc.returncode == 2, proc.stderr[-1000:]
    assert "needs a display" in proc.stderr.splitlines()[-1] and str(figure) in proc.stderr.splitlines()[-1]
    assert figure.is_file() and figure.stat().st_size > 10_000


def test_visualize_draws_the_four_views(text_run, tmp_path):
    figure = tmp_path / "figure.png"
    proc = gpt2("visualize", "--model_path", str(text_run / "model.pth"), "--figure", str(figure))
    assert proc.returncode == 0, proc.stderr
    import matplotlib.image

    assert matplotlib.image.imread(figure).shape[:2] == (825, 1210)


def test_the_model_card_states_an_adamw_runs_recipe_and_an_older_checkpoints():
    from gpt2.export import _recipe

    before_train_optimizer = {"lr": 0.0015, "min_lr_ratio": 0.1, "weight_decay": 0.1, "steps": 100,
                              "warmup_ratio": 0.05}
    assert _recipe(before_train_optimizer) == ("AdamW (lr 0.0015, weight decay 0.1 on the blocks' 2-D weights); 5 "
                                               "(0.05 of the steps) warmup steps, then a cosine decay to 0.1 x the peak")


def test_export_round_trips_through_transformers(corpus, tmp_path):
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path / "hf"
    proc = gpt2("export", "--model_path", str(corpus["model"]), "--vocab_path", str(corpus["vocab"]), "--out", str(out),
                "--evaluation", str(corpus["eval"]), "--dump_info", str(corpus["info"]))
    assert proc.returncode == 0, proc.stderr[-1500:]
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])  # the Hub reads the YAML between the first two --- lines
    report = json.loads(corpus["eval"].read_text())
    assert meta["pipeline_tag"] == "text-generation" and meta["language"] == ["en"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"perplexity": round(report["perplexity"], 2), "bits_per_byte": round(report["bits_per_byte"], 4)}
    info = json.loads(corpus["info"].read_text())
    sha1 = info["files"]["enwiki-sample.xml.bz2"]["sha1"]
    for fact in ("| layers / heads / dims | 2 / 2 / 64 |", f"{report['train_steps']:,} steps", sha1,
                 f"{info['articles']:,} articles", f"| perplexity | {report['perplexity']:.1f} |",
                 "Muon (lr 0.02, momentum 0.95, weight decay 0) on the blocks' 2-D weights, AdamW (lr 0.003)",
                 "the peak held, then a linear decay over the last 30% of the steps to 0.1 x the peak"):
        assert fact in card, fact
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    from gpt2.checkpoint import load_model

    ours, _ = load_model(corpus["model"], torch.device("cpu"))
    ours.eval()
    # Exactly the tokenizer's vocabulary: no padding row the model never trained takes probability.
    assert hf.config.vocab_size == ours.cfg.vocab_size == len(corpus["vocab"].read_text().splitlines())
    test = TokenStream(corpus["manifest"], "test")
    for start, length in windows(len(test), 128):  # every predicted token of the test split
        ids = torch.from_numpy(test.window(start, length + 1).astype(np.int64))[None]
        with torch.no_grad():
            mine = ours(ids[:, :-1])[0].log_softmax(-1)
            theirs = hf(ids[:, :-1]).logits.float().log_softmax(-1)
        torch.testing.assert_close(theirs.gather(-1, ids[:, 1:, None]), mine.gather(-1, ids[:, 1:, None]),
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(theirs.exp().sum(-1), torch.ones(1, length))

    tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<unk>", "<s>", "</s>", "<pad>")
    vocab = corpus["vocab"].read_text(encoding="utf-8").splitlines()
    raw = (corpus["train"].parent / "corpus.raw.txt").read_text(encoding="utf-8").splitlines()
    test = corpus["test"].read_text(encoding="utf-8").splitlines()
    stream = np.asarray(TokenStream(corpus["manifest"], "test").window(0, 20_000)).tolist()
    position = 0
    for raw_line, tokens in list(zip(raw, test))[:200]:  # expanda tokenized raw line i into test line i
        ids = tokenizer(raw_line)["input_ids"]
        assert [vocab[i] for i in ids] == tokens.split()
        if stream[position] == 2 and ids[:1] != [2]:
            position += 1  # the </s> that ends an article
        assert ids == stream[position: position + len(ids)]  # the same ids the shards hold
        position += len(ids)


@pytest.mark.reliability
def test_export_never_replaces_a_folder_it_did_not_write(corpus, tmp_path):
    models = tmp_path / "models"
    (models / "other-model").mkdir(parents=True)
    (models / "other-model/weights.bin").write_bytes(b"someone else's")
    args = ["export", "--model_path", str(corpus["model"]), "--vocab_path", str(corpus["vocab"])]
    proc = gpt2(*args, "--out", str(models))
    assert proc.returncode == 2 and (models / "other-model/weights.bin").read_bytes() == b"someone else's"
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {models} holds files that `export` did not write: it is "
                                                    "left alone; choose a new or empty folder as the output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no staging folder left beside it
    mine = models / "mine"
    assert gpt2(*args, "--out", str(mine)).returncode == 0
    assert gpt2(*args, "--out", str(mine)).returncode == 0  # its own earlier output is replaced
    assert (models / "other-model/weights.bin").exists() and (mine / "model.safetensors").exists()


def test_worked_example_scripts_run(corpus, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHON=sys.executable, CORPUS=str(corpus["vocab"].parent),
               OUT=str(tmp_path), STEPS="10", EVAL_STEPS="5", SAVE_STEPS="5")
    train = subprocess.run(["bash", str(ROOT / "scripts/run_train.sh")], env=env, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-1500:]
    evaluate = subprocess.run(["bash", str(ROOT / "scripts/run_eval.sh")], env=env, capture_output=True, text=True)
    assert evaluate.returncode == 0, evaluate.stderr[-1500:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["train_steps"] == 10 and json.loads(evaluate.stdout) == report
