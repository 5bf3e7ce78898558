"""Stage 6: the Snakemake HTML report -- real plots of real metrics, opened in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from conftest import TINY_CONFIG, snakemake
from gpt2.report import EMA_ALPHA, TAIL, loss_figure, open_in_browser, read_metrics, series_figure

CHROMIUM = shutil.which("chromium")
REPORT_CONFIG = {**TINY_CONFIG, "report": {"models": ["tiny"], "sample_tokens": 20}}
CATEGORIES = ["Corpus", "Evaluation", "Runtime", "Samples", "Training curves"]


@pytest.fixture(scope="module")
def report_run(tiny_run, tmp_path_factory):
    """`make report`'s two commands, with a `dot` on PATH that fails: the report needs no graphviz."""
    fake = tmp_path_factory.mktemp("bin")
    (fake / "dot").write_text("#!/bin/sh\necho 'dot must not be needed' >&2\nexit 1\n")
    (fake / "dot").chmod(0o755)
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    for target, extra in (("report_all", ()), ("report_all", ("--report", "results/report.html"))):
        proc = snakemake(tiny_run, target, config=REPORT_CONFIG, extra=extra, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return tiny_run


def _xy(line):
    return list(line.get_xdata()), list(line.get_ydata())


def test_plotted_series_are_the_metrics(tiny_run):
    df = read_metrics(tiny_run / "results/train/tiny/metrics.csv")
    evals = df.dropna(subset=["eval_loss"])
    fig = loss_figure(df, "tiny")
    linear, logx, tail, smooth = fig.axes
    for ax in (linear, logx):
        assert _xy(ax.lines[0]) == (list(df["tokens"]), list(df["train_loss"]))
        assert _xy(ax.lines[1]) == (list(evals["tokens"]), list(evals["eval_loss"]))
    assert logx.get_xscale() == "log"
    kept = df[df["tokens"] >= df["tokens"].max() * (1 - TAIL)]
    assert _xy(tail.lines[0]) == (list(kept["tokens"]), list(kept["train_loss"])) and len(kept) < len(df)
    assert np.allclose(smooth.lines[0].get_ydata(), df["train_loss"].ewm(alpha=EMA_ALPHA).mean())
    lr = series_figure(df, "lr", "learning rate", "lr")
    assert _xy(lr.axes[0].lines[0]) == (list(df["tokens"]), list(df["lr"]))


def test_tables_and_samples_carry_the_results(report_run):
    results = report_run / "results"
    evaluation = pd.read_csv(results / "tables/evaluation.csv")
    report = json.loads((results / "eval_tiny.json").read_text())
    assert list(evaluation["model"]) == ["tiny"]
    assert evaluation["perplexity"][0] == pytest.approx(report["perplexity"])
    assert evaluation["unigram perplexity"][0] == pytest.approx(report["unigram_perplexity"])
    assert evaluation["bits/byte"][0] == pytest.approx(report["bits_per_byte"])
    assert evaluation["unigram bits/byte"][0] == pytest.approx(report["unigram_bits_per_byte"])
    corpus = pd.read_csv(results / "tables/corpus.csv")
    manifest = json.loads((results / "shards/manifest.json").read_text())
    assert list(corpus["lines"]) == [manifest["splits"][s]["lines"] for s in corpus["split"]]
    assert list(corpus["documents"]) == [manifest["splits"][s]["documents"] for s in corpus["split"]]
    assert set(corpus["split"]) == {"train", "valid", "test"} and set(corpus["unit"]) == {"article"}
    assert set(corpus["articles in corpus"]) == {97}
    audit = pd.read_csv(results / "tables/audit.csv").set_index(["section", "what"])["count"]
    counts = json.loads((results / "corpus/audit.json").read_text())
    assert audit["pages", "articles kept"] == counts["pages"]["articles kept"] == 97
    assert audit["pages dropped", "redirect"] == 99 and audit["sentences", "kept"] == sum(corpus["lines"])
    runtime = pd.read_csv(results / "tables/runtime.csv")
    assert {"gather_corpus", "train/tiny", "evaluate/tiny"} <= set(runtime["job"])
    samples = (results / "samples/tiny.txt").read_text()
    assert [line.split("]")[0] for line in samples.split("\n\n") if line] == [
        "[The history of", "[In mathematics,", "[The city is located"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_opens_in_a_real_browser(report_run, tmp_path):
    from playwright.sync_api import sync_playwright

    html = report_run / "results/report.html"
    errors = []
    with sync_playwright() as pw:
        browser, page = open_in_browser(pw, CHROMIUM)
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(html.as_uri())
        body = page.inner_text("body")
        assert all(category in body for category in CATEGORIES), body[:500]
        page.get_by_text("Training curves", exact=True).click()
        listing = page.inner_text("body")
        assert all(f in listing for f in ("loss (four views)", "learning rate", "throughput"))
        page.locator("tr", has_text="loss (four views)").locator("a[iconname=eye]").click()
        page.wait_for_selector("img")
        page.screenshot(path=tmp_path / "report.png")
        page.get_by_text("Results", exact=True).first.click()
        page.get_by_text("Evaluation", exact=True).click()
        assert "evaluation" in page.inner_text("body")
        browser.close()
    assert errors == []
    pixels = matplotlib.image.imread(tmp_path / "report.png")
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50  # not a blank page
