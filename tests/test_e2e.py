"""The whole DAG through real Snakemake: dump -> corpus -> shards -> train -> evaluate."""

from __future__ import annotations

import pytest

import json

from conftest import TINY_CONFIG, snakemake


def test_end_to_end_outputs_and_caching(tiny_run):
    for path in ("resources/dumps/enwiki-sample/enwiki-sample.xml.bz2", "results/expanda/patches.json",
                 "results/corpus/vocab.txt", "results/shards/manifest.json", "results/train/tiny/model.pt",
                 "results/train/tiny/metrics.csv", "results/eval_tiny.json"):
        assert (tiny_run / path).is_file(), path
    for rule in ("list_dump", "patch_expanda", "gather_corpus", "make_shards", "train/tiny", "evaluate/tiny"):
        assert (tiny_run / f"results/benchmarks/{rule}.tsv").is_file(), rule
    report = json.loads((tiny_run / "results/eval_tiny.json").read_text())
    assert report["perplexity"] < report["unigram_perplexity"]
    dry = snakemake(tiny_run, "results/eval_tiny.json", config=TINY_CONFIG, extra=("-n",))
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.reliability
def test_unknown_model_name_is_refused(tmp_path):
    proc = snakemake(tmp_path, "results/eval_huge.json", extra=("-n",))
    assert proc.returncode != 0
    assert "No rule to produce results/eval_huge.json" in proc.stdout + proc.stderr


def test_export_is_a_dag_output(tiny_run):
    proc = snakemake(tiny_run, "results/hf/tiny", config=TINY_CONFIG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = {p.name for p in (tiny_run / "results/hf/tiny").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert json.loads((tiny_run / "results/hf/tiny/config.json").read_text())["n_layer"] == 2
