"""Stage 7: downstream tasks, built from the test split's articles only and scored by lm-evaluation-harness.

`build_tasks` writes two tasks under results/tasks/, each a JSONL of items (the source page_id on
every one) beside an lm-eval task YAML that reads it as a local `json` dataset, so
`lm_eval --include_path results/tasks --tasks wiki_last_word` finds them:
  wiki_last_word      LAMBADA-style: a passage of a test article (up to PASSAGE sentences) whose last
                      word is the target; accuracy of the greedy continuation, its log-likelihood
  wiki_next_sentence  HellaSwag-style: CONTEXT sentences of a test article, four endings - the true
                      next sentence and three from other test articles; acc and acc_norm, chance 25 %
Every choice is made by the seeded article hash, so the same corpus and corpus.seed give the same
items. `score` runs lm-eval's Python API (`hf` model type) on a model's export, and scores the
unigram baseline (the train split's token counts) on the same items.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import yaml

from gpt2 import UserError
from gpt2.articles import read_articles
from gpt2.files import atomic_dir, atomic_path
from gpt2.params import DownstreamParams

LAST_WORD, NEXT_SENTENCE = "wiki_last_word", "wiki_next_sentence"
TASKS = (LAST_WORD, NEXT_SENTENCE)
PASSAGE = 3  # sentences at most in a last-word passage
CONTEXT = 2  # sentences of context before the ending to choose
CHOICES = 4
CHANCE = {LAST_WORD: 0.0, NEXT_SENTENCE: 1 / CHOICES}  # last word: an open answer, a guess is ~never right
TRAILING = ".!?\"')]}»”’"  # stripped from a passage's last word


def _rank(*parts) -> int:
    """A 64-bit hash of its parts: every choice the task builder makes."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def test_articles(articles: Path, raw: Path) -> list[tuple[int, list[str]]]:
    """(page id, sentences) of each test-split article, in corpus order (the test split comes first)."""
    out = []
    with open(raw, encoding="utf-8") as fh:
        for article in read_articles(articles):
            lines = [fh.readline().rstrip("\n") for _ in range(article.lines)]
            if article.split == "test":
                out.append((article.page_id, lines))
    return out


def last_word_item(page_id: int, lines: list[str], seed: int) -> dict | None:
    """A passage ending at a hash-chosen sentence (or the next that ends in a word), its last word the target."""
    start = _rank(seed, "last", page_id) % len(lines)
    for end in list(range(start, len(lines))) + list(range(start)):
        passage = " ".join(lines[max(0, end - PASSAGE + 1): end + 1]).rstrip(TRAILING)
        words = passage.split(" ")
        if len(words) >= 8 and words[-1].isalpha():
            return {"page_id": page_id, "text": passage}
    return None


def next_sentence_item(page_id: int, lines: list[str], pool: list[tuple[int, str]], seed: int) -> dict | None:
    """CONTEXT sentences, then the true next one among three endings from other test articles."""
    if len(lines) < CONTEXT + 1:
        return None
    at = _rank(seed, "next", page_id) % (len(lines) - CONTEXT)
    others = [sentence for pid, sentence in pool if pid != page_id]
    if len(others) < CHOICES - 1:
        return None
    picks: list[str] = []
    k = 0
    while len(picks) < CHOICES - 1:
        candidate = others[_rank(seed, "ending", page_id, k) % len(others)]
        if candidate not in picks and candidate != lines[at + CONTEXT]:
            picks.append(candidate)
        k += 1
    label = _rank(seed, "label", page_id) % CHOICES
    choices = picks[:label] + [lines[at + CONTEXT]] + picks[label:]
    return {"page_id": page_id, "context": " ".join(lines[at: at + CONTEXT]), "choices": choices, "label": label}


def task_yaml(name: str, data: str) -> dict:
    """The lm-eval task reading the local JSONL `data` (a path relative to the workflow folder)."""
    common = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data}},
              "test_split": "test", "metadata": {"version": 1.0}}
    if name == LAST_WORD:  # as lm-eval's own lambada_openai
        return {**common, "output_type": "loglikelihood", "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
                "doc_to_target": "{{' '+text.split(' ')[-1]}}",
                "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    return {**common, "output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_target": "{{label}}",
            "doc_to_choice": "choices",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}


def build_tasks(articles: Path, raw: Path, out: Path, seed: int, params: DownstreamParams) -> dict[str, int]:
    """Write `out`/<task>.jsonl and <task>.yaml for both tasks from the test articles; return the items per task."""
    test = test_articles(articles, raw)
    pool = [(pid, sentence) for pid, lines in test for sentence in lines]
    items = {LAST_WORD: [last_word_item(pid, lines, seed) for pid, lines in test],
             NEXT_SENTENCE: [next_sentence_item(pid, lines, pool, seed) for pid, lines in test]}
    counts = {}
    with atomic_dir(out, "build-tasks") as staging:
        for name, found in items.items():
            kept = [item for item in found if item][: params.items]
            if not kept:
                raise UserError(f"the test split has no article long enough for {name}; use a bigger dump or "
                                "a larger corpus.split_ratio")
            with open(staging / f"{name}.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in kept)
            data = (Path(out) / f"{name}.jsonl").as_posix()
            (staging / f"{name}.yaml").write_text(yaml.safe_dump(task_yaml(name, data), sort_keys=False))
            counts[name] = len(kept)
    print(f"tasks from {len(test):,} test articles: {counts}", file=sys.stderr)
    return counts


# --- scoring ---------------------------------------------------------------------------------------


def _read_items(tasks: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (tasks / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def unigram_baseline(tasks: Path, tokenizer, logp: np.ndarray) -> dict[str, dict]:
    """The unigram model (train-split token frequencies) on the same items, scored as lm-eval scores."""
    def loglik(text: str) -> float:
        return float(sum(logp[i] for i in tokenizer.encode(text, add_special_tokens=False)))

    out = {}
    words = _read_items(tasks, LAST_WORD)
    targets = [" " + w["text"].split(" ")[-1] for w in words]
    liks = [loglik(t) for t in targets]
    best = int(np.argmax(logp))
    greedy = [all(i == best for i in tokenizer.encode(t, add_special_tokens=False)) for t in targets]
    out[LAST_WORD] = {"perplexity": math.exp(-sum(liks) / len(liks)), "acc": float(np.mean(greedy))}
    items = _read_items(tasks, NEXT_SENTENCE)
    scores = [[loglik(" " + c) for c in item["choices"]] for item in items]
    acc = np.mean([int(np.argmax(s)) == item["label"] for s, item in zip(scores, items)])
    norm = np.mean([int(np.argmax([v / len(c) for v, c in zip(s, item["choices"])])) == item["label"]
                    for s, item in zip(scores, items)])
    out[NEXT_SENTENCE] = {"acc": float(acc), "acc_norm": float(norm)}
    return out


def score(model_dir: Path, tasks: Path, shards: Path, out: Path, model: str, params: DownstreamParams) -> dict:
    """lm-eval (hf model type, CPU or CUDA) on the export in `model_dir`: our tasks and params.extra_tasks."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    from gpt2.evaluate import unigram_logprobs
    from gpt2.shards import TokenStream

    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = list(TASKS) + list(params.extra_tasks)
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"}, tasks=names,
        task_manager=TaskManager(include_path=str(tasks)), limit=params.items, batch_size=params.batch,
        device=device, log_samples=False, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train = TokenStream(shards, "train")
    logp = unigram_logprobs(train, train.manifest["vocab_size"])
    unigram = unigram_baseline(Path(tasks), tokenizer, logp)
    report = {"model": model, "lm_eval": lm_eval.__version__, "device": device, "items_cap": params.items,
              "tasks": {}}
    for name in names:
        got = results["results"][name]
        metrics = {key.split(",")[0]: value for key, value in got.items()
                   if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
        stderr = {key.split(",")[0].removesuffix("_stderr"): value for key, value in got.items()
                  if "_stderr," in key and isinstance(value, (int, float))}
        report["tasks"][name] = {"items": results["n-samples"][name]["effective"], "metrics": metrics,
                                 "stderr": stderr, "chance": CHANCE.get(name), "unigram": unigram.get(name)}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    for name, task in report["tasks"].items():
        print(f"{name}: {task['items']} items, {task['metrics']} (unigram {task['unigram']})", file=sys.stderr)
    return report
