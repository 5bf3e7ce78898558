"""Stage 7: downstream tasks from the test articles, scored by a real lm-evaluation-harness run on an export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KOREAN, TINY_CONFIG, gpt2, snakemake
from gpt2.articles import HEADER, article_row, read_articles
from gpt2.downstream import LAST_WORD, NEXT_SENTENCE, TASKS, build_tasks, unigram_baseline
from gpt2.params import DownstreamParams

LM_EVAL = Path(sys.executable).with_name("lm-eval")  # beside this Python, as make setup installs it


@pytest.fixture(scope="module")
def downstream_run(tiny_run):
    """`snakemake results/downstream_tiny.json` on the session's tiny run: export, tasks, lm-eval."""
    proc = snakemake(tiny_run, "results/downstream_tiny.json", config=TINY_CONFIG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tiny_run


def _items(folder: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()]


def _articles(work: Path) -> dict[int, tuple[str, list[str]]]:
    """page id -> (split, lines) of the corpus."""
    out = {}
    with open(work / "results/corpus/corpus.raw.txt", encoding="utf-8") as raw:
        for a in read_articles(work / "results/corpus/corpus.articles.tsv"):
            out[a.page_id] = (a.split, [raw.readline().rstrip("\n") for _ in range(a.lines)])
    return out


def test_items_come_only_from_test_articles_and_two_builds_are_identical(downstream_run, tmp_path):
    tasks, articles = downstream_run / "results/tasks", _articles(downstream_run)
    words, nexts = _items(tasks, LAST_WORD), _items(tasks, NEXT_SENTENCE)
    assert words and nexts
    assert {articles[i["page_id"]][0] for i in words + nexts} == {"test"}
    for item in words:  # a passage of its own article, cut after its last word
        assert item["text"] in " ".join(articles[item["page_id"]][1]) and item["text"].split(" ")[-1].isalpha()
    for item in nexts:  # the gold ending follows the context in its article; the others come from other ones
        text = " ".join(articles[item["page_id"]][1])
        gold = item["choices"][item["label"]]
        assert f"{item['context']} {gold}" in text and len(set(item["choices"])) == 4
        assert all(c not in articles[item["page_id"]][1] for k, c in enumerate(item["choices"]) if k != item["label"])
    proc = gpt2("build-tasks", "--articles", str(downstream_run / "results/corpus/corpus.articles.tsv"), "--raw",
                str(downstream_run / "results/corpus/corpus.raw.txt"), "--out", str(tmp_path / "tasks"), "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    for task in TASKS:
        assert (tmp_path / "tasks" / f"{task}.jsonl").read_bytes() == (tasks / f"{task}.jsonl").read_bytes()


def test_a_real_lm_eval_run_scores_the_tiny_export(downstream_run):
    import lm_eval

    report = json.loads((downstream_run / "results/downstream_tiny.json").read_text())
    assert report["lm_eval"] == lm_eval.__version__ and set(report["tasks"]) == set(TASKS)
    words, nexts = report["tasks"][LAST_WORD], report["tasks"][NEXT_SENTENCE]
    assert words["items"] == len(_items(downstream_run / "results/tasks", LAST_WORD))
    assert set(words["metrics"]) == {"perplexity", "acc"} and words["metrics"]["perplexity"] > 1
    assert set(nexts["metrics"]) == {"acc", "acc_norm"} and 0 <= nexts["metrics"]["acc"] <= 1
    assert nexts["chance"] == 0.25 and set(nexts["stderr"]) == {"acc", "acc_norm"}
    assert set(nexts["unigram"]) == {"acc", "acc_norm"} and words["unigram"]["perplexity"] > 1


def test_the_lm_eval_cli_finds_the_task_yaml(downstream_run):
    proc = subprocess.run([str(LM_EVAL), "ls", "tasks", "--include_path", "results/tasks"], cwd=downstream_run,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(re.search(rf"\|{task}\s*\|results/tasks/{task}\.yaml", proc.stdout) for task in TASKS)


def test_the_unigram_baseline_sits_near_chance_on_next_sentence(tiny_run, tmp_path):
    """Every article of the sample taken as a test article (97 items): the unigram model cannot tell the true
    next sentence from another article's."""
    from transformers import PreTrainedTokenizerFast

    from gpt2.evaluate import unigram_logprobs
    from gpt2.shards import TokenStream
    from gpt2.vocab import load_tokenizer

    rows = list(read_articles(tiny_run / "results/corpus/corpus.articles.tsv"))
    (tmp_path / "all_test.tsv").write_bytes(HEADER + "".join(
        article_row("test", a.page_id, a.title, a.lines) for a in rows).encode())
    build_tasks(tmp_path / "all_test.tsv", tiny_run / "results/corpus/corpus.raw.txt", tmp_path / "tasks", 0,
                DownstreamParams(items=1000))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(tiny_run / "results/corpus/vocab.txt"))
    manifest = tiny_run / "results/shards/manifest.json"
    logp = unigram_logprobs(TokenStream(manifest, "train"), json.loads(manifest.read_text())["vocab_size"])
    scores = unigram_baseline(tmp_path / "tasks", tokenizer, logp)
    assert len(_items(tmp_path / "tasks", NEXT_SENTENCE)) > 80
    assert 0.1 < scores[NEXT_SENTENCE]["acc"] < 0.4 and 0.1 < scores[NEXT_SENTENCE]["acc_norm"] < 0.4


def test_korean_items_from_korean_test_articles(tmp_path):
    lines = [sentence + "." for text in KOREAN for sentence in text.rstrip(".").split(". ")]
    rows = [("test", 100 + i, f"문서 {i}", lines[3 * i: 3 * i + 3]) for i in range(len(lines) // 3)]
    (tmp_path / "articles.tsv").write_bytes(HEADER + "".join(
        article_row(split, pid, title, len(body)) for split, pid, title, body in rows).encode())
    (tmp_path / "raw.txt").write_text("".join(line + "\n" for *_, body in rows for line in body), encoding="utf-8")
    counts = build_tasks(tmp_path / "articles.tsv", tmp_path / "raw.txt", tmp_path / "tasks", 0, DownstreamParams())
    assert counts[NEXT_SENTENCE] == len(rows)
    for task in TASKS:
        items = _items(tmp_path / "tasks", task)
        assert items and all(re.search("[가-힣]", json.dumps(i, ensure_ascii=False)) for i in items)
        assert {i["page_id"] for i in items} <= {pid for _, pid, _, _ in rows}
