"""Stage 2: expanda patched as a rule, and real corpus builds through Snakemake."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import debris
from conftest import KOREAN, ROOT, gpt2, serve, snakemake, write_dump
from gpt2 import UserError
from gpt2.audit import Audit
from gpt2.corpus import _wiki_args, piece_ranges, stream_offsets
from gpt2.patched_expanda import installed_expanda, patch_expanda
from gpt2.files import file_digest
from gpt2.params import CorpusParams
from gpt2.templates import LANGUAGE_RULES, RULES
from gpt2.vocab import SPECIALS
from gpt2.wikitext import GAP, HOLE, Cleaner, Site, admit
from gpt2.wikixml import Export, Page
from wikidump import dump_files, multistream, replicate, sample_export, sample_parts, three_part_dump, write_mirror

CORPUS_FILES = ("vocab.txt", "corpus.raw.txt", "corpus.train.txt", "corpus.valid.txt", "corpus.test.txt",
                "corpus.articles.tsv", "audit.json")
CORPUS = [f"results/corpus/{name}" for name in CORPUS_FILES]
SAMPLE_DUMP = "resources/dumps/enwiki-sample/enwiki-sample.xml.bz2"



KOREAN_NAMESPACES = {6: "파일", -2: "미디어", 14: "분류", 10: "틀"}
KOREAN_PAGES_DROPPED = [  # (namespace, title, wikitext[, redirect target]) -> why it is not an article
    ((0, "서울특별시", "#넘겨주기 [[문서 0]]", "문서 0"), "redirect"),
    ((0, "수도", "'''수도'''는 다음을 가리킨다.\n* [[서울]]\n{{동음이의}}"), "disambiguation"),
    ((1, "토론:문서 0", "이 문서의 내용에 대해 의견을 나누는 토론 문서입니다."), "other namespace"),
    ((0, "빈 문서", "{{정보상자}}\n== 같이 보기 =="), "empty after cleaning"),
]
KOREAN_FILE_LINKS = "[[파일:사진{i}.jpg|섬네일|사진 설명]]", "[[그림:지도.png|섬네일|지도]]"


def _korean_dump(path: Path) -> Path:
    photo, atlas = KOREAN_FILE_LINKS
    pages = [(0, f"문서 {i}", f"{photo.format(i=i)}{text}\n\n{atlas}{text.replace('.', '이다.', 1)}[[분류:도시]]")
             for i, text in enumerate(KOREAN * 3)]
    pages.append((0, "한국의 도시 목록", "대한민국에는 많은 도시가 있으며 이 문서는 그 도시들을 정리한 목록이다.\n* 서울"))
    return write_dump(path, pages + [page for page, _ in KOREAN_PAGES_DROPPED], "ko", KOREAN_NAMESPACES)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """One real Snakemake build of the corpus from the bundled sample (shared by several tests)."""
    work = tmp_path_factory.mktemp("sample")
    proc = snakemake(work, *CORPUS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_site_packages_untouched_and_copy_patched(sample_run):
    original = (installed_expanda() / "tokenization.py").read_text().splitlines()
    assert original[82] == "    tokenizer.train(trainer, [subset_file])"
    patched = (sample_run / "results/expanda/expanda/tokenization.py").read_text().splitlines()
    assert "    tokenizer.train([subset_file], trainer)" in patched and original[82] not in patched
    wiki = (sample_run / "results/expanda/expanda/ext/wikipedia.py").read_text()
    assert "nltk.download" not in wiki and "punkt.tokenizer_for('english')" in wiki
    applied = json.loads((sample_run / "results/expanda/patches.json").read_text())
    assert [p["patch"] for p in applied] == sorted(p.name for p in (ROOT / "patches").glob("*.patch"))


def test_sample_corpus_is_valid_and_cached(sample_run):
    files = {Path(f).name: sample_run / f for f in CORPUS}
    vocab = files["vocab.txt"].read_text(encoding="utf-8").splitlines()
    assert tuple(vocab[:4]) == SPECIALS and len(vocab) == 8000 and len(set(vocab)) == len(vocab)
    train, valid, test, raw = (files[f"corpus.{n}.txt"].read_text(encoding="utf-8").splitlines()
                               for n in ("train", "valid", "test", "raw"))
    assert len(train) + len(valid) + len(test) == len(raw)
    splits = [row["split"] for row in _articles(sample_run)]
    assert splits == sorted(splits, key=["test", "valid", "train"].index)  # the order of corpus.raw.txt
    ratios = (0.1, 0.05)  # corpus.split_ratio and corpus.valid_ratio, of the articles
    assert (splits.count("test"), splits.count("valid")) == tuple(math.ceil(r * len(splits)) for r in ratios)
    known = set(vocab)
    tokens = [t for line in train[:500] for t in line.split()]
    assert len(tokens) > 5000 and sum(t in known for t in tokens) / len(tokens) > 0.99
    info = json.loads((sample_run / "resources/dumps/enwiki-sample/dump.json").read_text())
    assert (info["source"], info["lang"], info["articles"], info["pieces"]) == ("sample", "en", len(splits), 1)
    # The sample's 206 pages: 99 redirects, 1 of another namespace, 8 disambiguation pages and one
    # article that keeps no sentence; the audit counts each, and the articles kept are the corpus's.
    audit = json.loads((sample_run / "results/corpus/audit.json").read_text())
    assert audit["pages dropped"] == {"redirect": 99, "disambiguation": 8, "empty after cleaning": 1,
                                      "other namespace": 1}
    assert audit["pages"]["read"] == 206 and audit["pages"]["articles kept"] == len(splits) == 97
    assert (sample_run / "results/benchmarks/gather_corpus.tsv").exists()
    dry = snakemake(sample_run, *CORPUS, extra=("-n",))
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr


def test_the_seed_orders_the_articles(sample_run, tmp_path):
    """corpus.seed picks the article order (the hash of seed and page id): the same articles, in another order."""
    proc = snakemake(tmp_path, "results/corpus/corpus.articles.tsv", config={"corpus": {"seed": 1}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = ([r["page_id"] for r in _articles(work)] for work in (tmp_path, sample_run))
    assert sorted(ours) == sorted(theirs) and ours != theirs


@pytest.mark.reliability
def test_a_patch_that_does_not_apply_names_patch_and_file(tmp_path):
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "0009-stale.patch").write_text(
        "--- a/tokenization.py\n+++ b/tokenization.py\n@@ -83,1 +83,1 @@\n"
        "-    tokenizer.train(nothing_like_this)\n+    tokenizer.train(other)\n")
    with pytest.raises(UserError, match=r"patch 0009-stale.patch does not apply to expanda/tokenization.py"):
        patch_expanda(tmp_path / "expanda", sorted(patches.glob("*.patch")))
    assert not (tmp_path / "expanda").exists()


def _extension_on(dump: Path, expanda_dir: Path, work: Path):
    """expanda's Wikipedia extension on `dump`, from `expanda_dir`, in a process of its own."""
    work.mkdir()
    code = ("import sys; from expanda.extension import Extension; "
            "Extension('expanda.ext.wikipedia').call(sys.argv[1], sys.argv[2], sys.argv[3], "
            "{'num-cores': '1', 'min-length': '10', 'unit': 'article'})")
    path = os.pathsep.join([str(expanda_dir), str(ROOT / "src")])
    return subprocess.run([sys.executable, "-c", code, str(dump), str(work / "out.txt"), str(work)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path), timeout=300)


@pytest.mark.reliability
def test_dead_worker_fails_with_its_real_error(tmp_path):
    """Bypassing our dump check, an unsupported language kills a worker inside expanda."""
    dump = write_dump(tmp_path / "fr.xml.bz2", [(0, "Paris", "Paris est la capitale de la France. " * 3)], "fr")
    patch_expanda(tmp_path / "patched", sorted((ROOT / "patches").glob("*.patch")))
    proc = _extension_on(dump, tmp_path / "patched", tmp_path / "ws1")
    assert proc.returncode != 0 and "NotImplementedError: language [fr] is not supported" in proc.stderr
    # Upstream expanda carries on and trips over a temp file the dead worker never wrote.
    upstream = tmp_path / "upstream"
    shutil.copytree(installed_expanda(), upstream / "expanda")
    proc = _extension_on(dump, upstream, tmp_path / "ws2")
    assert proc.returncode != 0 and "FileNotFoundError" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.reliability
def test_a_worker_killed_mid_extraction_fails_the_job_instead_of_hanging(tmp_path):
    """The OOM killer's kill -9 on a cleaning worker while articles are still queued for it."""
    header, pages, footer = sample_export()
    dump = tmp_path / "big.xml.bz2"
    dump.write_bytes(bz2.compress((header + "".join(replicate(pages, 8)) + footer).encode()))
    patch_expanda(tmp_path / "patched", sorted((ROOT / "patches").glob("*.patch")))
    (tmp_path / "ws").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from expanda.extension import Extension; Extension("
         "'expanda.ext.wikipedia').call(sys.argv[1], sys.argv[2], sys.argv[3], {'num-cores': '1', 'unit': 'article'})",
         str(dump), str(tmp_path / "ws/out.txt"), str(tmp_path / "ws")], stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "patched"), str(ROOT / "src")])))
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    while not children.read_text().split():  # the cleaning worker has started
        assert proc.poll() is None
    os.kill(int(children.read_text().split()[0]), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "wikipedia worker" in stderr and "died: exit code -9" in stderr


@pytest.mark.skipif(importlib.util.find_spec("kss") is None, reason="kss is not installed")
def test_korean_dump_goes_through_kss(tmp_path):
    dump = _korean_dump(tmp_path / "kowiki-test.xml.bz2")
    proc = snakemake(tmp_path, *CORPUS, config={
        "dump": {"source": "path", "path": str(dump)},
        "corpus": {"vocab_size": 400, "min_length": 10}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "resources/dumps/kowiki-test/dump.json").read_text())["lang"] == "ko"
    raw = (tmp_path / "results/corpus/corpus.raw.txt").read_text(encoding="utf-8").splitlines()
    # kss split each paragraph into its sentences: no line holds two of them.
    assert len(raw) >= 2 * len(set(KOREAN)) and all(line.count(". ") == 0 for line in raw)
    assert any(re.search("[가-힣]", line) for line in raw)
    assert not any(word in line for line in raw for word in ("섬네일", "사진 설명", "지도", "분류"))
    audit = json.loads((tmp_path / "results/corpus/audit.json").read_text(encoding="utf-8"))
    articles = len(KOREAN) * 3 + 1
    assert audit["pages"] == {"read": articles + len(KOREAN_PAGES_DROPPED), "articles kept": articles,
                              "list pages kept": 1}
    assert audit["pages dropped"] == {why: 1 for _, why in KOREAN_PAGES_DROPPED}
    photo, atlas = KOREAN_FILE_LINKS
    assert audit["removed bytes"]["file links and galleries"] == sum(
        len((photo.format(i=i) + atlas).encode()) for i in range(articles - 1))
    vocab = (tmp_path / "results/corpus/vocab.txt").read_text(encoding="utf-8").splitlines()
    assert tuple(vocab[:4]) == SPECIALS and any(re.search("[가-힣]", v) for v in vocab)


def _broken(kind: str, tmp_path: Path, sample: Path) -> dict:
    dump = tmp_path / "bad.xml.bz2"
    if kind == "truncated":
        dump.write_bytes(sample.read_bytes()[:100_000])
    elif kind == "not-mediawiki":
        dump.write_bytes(__import__("bz2").compress(b"<rss><channel/></rss>"))
    elif kind == "no-articles":
        write_dump(dump, [(14, "Category:Cities", "Cities of the world.")])
    elif kind == "language":
        write_dump(dump, [(0, "Paris", "Paris est la capitale de la France.")], lang="fr")
    return {"dump": {"source": "path", "path": str(dump)}}


@pytest.mark.parametrize("kind, message", [
    ("truncated", "bad.xml.bz2: the bz2 stream ends early (truncated dump)"),
    ("not-mediawiki", "bad.xml.bz2: root element is <rss>, not a MediaWiki export"),
    ("no-articles", "bad.xml.bz2: no main-namespace articles among 1 pages"),
    ("language", "bad.xml.bz2: language 'fr' is not supported by expanda"),
])
@pytest.mark.reliability
def test_bad_dump_fails_the_workflow_cleanly(tmp_path, sample_dump, kind, message):
    proc = snakemake(tmp_path, "results/corpus/vocab.txt", config=_broken(kind, tmp_path, sample_dump))
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not any((tmp_path / f).exists() for f in CORPUS)
    assert not list((tmp_path / "resources/dumps/bad").glob("bad.*"))


@pytest.mark.parametrize("config, message", [
    ({"corpus": {"vocab_size": 70000}}, "config: corpus.vocab_size = 70000 is out of range (must be <= 65535)"),
    ({"corpus": {"split_ratio": 0}}, "config: corpus.split_ratio = 0 is out of range (must be > 0)"),
    ({"corpus": {"vocab": 10}}, "config: unknown key corpus.vocab (allowed here:"),
    ({"dump": {"source": "ftp"}}, "config: dump.source = 'ftp' must be one of sample, url, path, wiki"),
    ({"corpus": {"threads": "two"}}, "config: corpus.threads = 'two' has the wrong type (expected integer)"),
    ({"corpus": {"unit": "sentence"}}, "config: corpus.unit is gone: every corpus is built of whole articles"),
    ({"corpus": {"chunks": 16}}, "config: corpus.chunks is now two keys: corpus.extract_jobs"),
])
@pytest.mark.reliability
def test_bad_config_is_one_line_naming_the_key(tmp_path, config, message):
    proc = snakemake(tmp_path, "results/corpus/vocab.txt", config=config)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def _articles(work: Path) -> list[dict]:
    with open(work / "results/corpus/corpus.articles.tsv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def _article_lines(work: Path) -> list[tuple[dict, list[str]]]:
    """Each sidecar row with its lines of corpus.raw.txt (the test, valid and train blocks, in order)."""
    raw = iter((work / "results/corpus/corpus.raw.txt").read_text(encoding="utf-8").splitlines())
    return [(row, [next(raw) for _ in range(int(row["lines"]))]) for row in _articles(work)]


def _dump_pages(dump: Path) -> dict[str, tuple[str, str]]:
    """page id -> (title, text as the cleaner leaves it) of the dump's articles."""
    export = Export(bz2.open(dump), CorpusParams().max_page_bytes)
    site = Site.from_siteinfo(export.lang, export.namespace_keys)
    cleaner = Cleaner(site, Audit())
    return {page.page_id: (page.title, cleaner.clean(page.text)) for page in export.pages()
            if admit(page, site, False, cleaner.audit)}


def test_no_article_is_in_two_splits_and_each_is_the_dump_article_it_names(sample_run):
    rows = _article_lines(sample_run)
    ids = [row["page_id"] for row, _ in rows]
    assert len(ids) == len(set(ids)) and {row["split"] for row, _ in rows} == {"test", "valid", "train"}
    pages = _dump_pages(sample_run / SAMPLE_DUMP)
    for row, lines in rows:
        title, text = pages[row["page_id"]]
        assert row["title"] == title
        found = [line for line in lines if line in text]  # a sentence is a piece of a cleaned line
        assert len(found) >= 0.9 * len(lines), (title, [line for line in lines if line not in text][:3])


def test_sentences_keep_the_dump_order_within_an_article(sample_run):
    pages = _dump_pages(sample_run / SAMPLE_DUMP)
    checked = 0
    for row, lines in _article_lines(sample_run):
        text, position = pages[row["page_id"]][1], 0
        for line in lines:
            where = text.find(line, position)
            if where >= 0:  # in the dump's order: each found after the one before
                assert text.find(line) >= 0 and where >= position
                position, checked = where + len(line), checked + 1
            else:
                assert line not in text[position:], (row["title"], line)
    assert checked > 10000
    tokens = (sample_run / "results/corpus/corpus.train.txt").read_text(encoding="utf-8").splitlines()
    raw = (sample_run / "results/corpus/corpus.raw.txt").read_text(encoding="utf-8").splitlines()
    from gpt2.vocab import load_tokenizer

    tokenizer = load_tokenizer(sample_run / "results/corpus/vocab.txt")
    first_train = len(raw) - len(tokens)  # corpus.train.txt is the tail of corpus.raw.txt, tokenized
    for k in range(0, len(tokens), 997):
        assert " ".join(tokenizer.encode(raw[first_train + k]).tokens) == tokens[k]


def test_two_builds_give_identical_vocab_and_shards(sample_run, tmp_path):
    """A second build in other processes, with another number of workers, gives the same bytes."""
    proc = snakemake(tmp_path, "results/shards/manifest.json", config={"corpus": {"threads": 1}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = snakemake(sample_run, "results/shards/manifest.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in CORPUS_FILES:
        assert (tmp_path / "results/corpus" / name).read_bytes() == (sample_run / "results/corpus" / name).read_bytes()
    shards = sorted(p.relative_to(sample_run) for p in (sample_run / "results/shards").rglob("*") if p.is_file())
    assert len(shards) >= 5
    for path in shards:
        if path.name != "manifest.json":  # it records the sharding speed too
            assert (tmp_path / path).read_bytes() == (sample_run / path).read_bytes(), path


def test_the_corpus_options_reach_expanda():
    args = _wiki_args(CorpusParams(split_sent=False, min_length=7, max_length=99, max_page_bytes=4096, threads=3))
    assert args == {"num-cores": "3", "min-length": "7", "max-length": "99", "split-sent": "false", "unit": "article",
                    "max-page-bytes": "4096", "seed": "0", "list-pages": "keep"}


def test_input_vocab_is_reused_and_packed_lines_keep_articles(sample_run, tmp_path):
    vocab = sample_run / "results/corpus/vocab.txt"
    proc = snakemake(tmp_path, "results/corpus/corpus.raw.txt", config={"corpus": {
        "input_vocab": str(vocab), "split_sent": False, "max_length": 400}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "results/corpus/vocab.txt").read_bytes() == vocab.read_bytes()
    lines = [len(line) for line in (tmp_path / "results/corpus/corpus.raw.txt").read_text(encoding="utf-8").splitlines()]
    assert max(lines) > 200 and sum(n <= 400 for n in lines) > 0.95 * len(lines)  # sentences packed up to 400
    assert all(n > 0 for n in lines)  # no empty line, even where a single sentence is longer than max_length
    from gpt2.corpus import train_vocab

    with pytest.raises(UserError, match="corpus.input_vocab"):
        train_vocab([], sample_run / "results/expanda", tmp_path / "x.txt",
                    CorpusParams(input_vocab=str(tmp_path / "missing.txt")))


# --- a whole wiki: one extraction job per part or piece, gathered -----------------------------

WIKI_DATE = "20260101"


def _wiki_config(mirror: str, chunks: int) -> dict:
    """`chunks` extraction pieces and as many buckets."""
    return {"dump": {"source": "wiki", "wiki": "enwiki", "date": "latest", "mirror": mirror},
            "corpus": {"extract_jobs": chunks, "buckets": chunks, "threads": 1}}


@pytest.fixture(scope="module")
def wiki_parts():
    """The sample's pages as a three-part enwiki dump (header, parts, footer)."""
    return sample_parts()


@pytest.fixture(scope="module")
def wiki_run(tmp_path_factory):
    """A three-part dump served over loopback HTTP, built by Snakemake into shards."""
    files = {f"/enwiki/{WIKI_DATE}/{name}": data for name, data in three_part_dump("enwiki", WIKI_DATE).items()}
    files["/enwiki/"] = f'<a href="{WIKI_DATE}/">{WIKI_DATE}/</a>'.encode()
    work = tmp_path_factory.mktemp("wiki")
    for server in serve(files):
        proc = snakemake(work, "results/shards/manifest.json", config=_wiki_config(server.base, 3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_wiki_parts_are_separate_jobs_with_the_corpus_of_one_file(wiki_run, sample_run):
    logs = sorted((wiki_run / "results/logs/extract_chunk").glob("*/0.log"))
    assert len(logs) == 3 and all(re.search(r"articles/s, [\d.]+ MB of bz2/s", log.read_text()) for log in logs)
    for name in CORPUS_FILES:  # the sample's one file and its three parts: the same corpus and audit, byte for byte
        assert file_digest(wiki_run / "results/corpus" / name) == file_digest(sample_run / "results/corpus" / name)
    rows = _articles(wiki_run)
    assert len({r["page_id"] for r in rows}) == len(rows) == len(_articles(sample_run))
    n = len(rows)
    assert [r["split"] for r in rows] == (["test"] * math.ceil(n * 0.1) + ["valid"] * math.ceil(n * 0.05)
                                          + ["train"] * (n - math.ceil(n * 0.1) - math.ceil(n * 0.05)))
    manifest = json.loads((wiki_run / "results/shards/manifest.json").read_text())
    assert manifest["unit"] == "article" and manifest["splits"]["test"]["documents"] == math.ceil(n * 0.1)
    info = json.loads((wiki_run / "resources/dumps/enwiki-latest/dump.json").read_text())
    assert (info["date"], info["lang"], info["articles"], len(info["files"])) == (WIKI_DATE, "en", n, 3)


def test_wiki_shards_per_bucket_equal_one_sharding_job(wiki_run, tmp_path):
    from gpt2.shards import TokenStream

    c = wiki_run / "results/corpus"
    proc = gpt2("make-shards", "--vocab_path", str(c / "vocab.txt"), "--train_corpus", str(c / "corpus.train.txt"),
                "--valid_corpus", str(c / "corpus.valid.txt"), "--test_corpus", str(c / "corpus.test.txt"),
                "--raw_corpus", str(c / "corpus.raw.txt"), "--articles", str(c / "corpus.articles.tsv"),
                "--out", str(tmp_path / "one"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((wiki_run / "results/logs/shard_bucket").glob("*.log"))) == 3
    ours, one = wiki_run / "results/shards", tmp_path / "one"
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (ours, one))
    for split in ("test", "valid", "train"):
        x, y = TokenStream(ours / "manifest.json", split), TokenStream(one / "manifest.json", split)
        assert len(x) == len(y) and (x.window(0, len(x)) == y.window(0, len(y))).all(), split
        for key in ("documents", "lines", "tokens", "bytes", "unk_tokens", "missing_from_vocab"):
            assert a["splits"][split][key] == b["splits"][split][key], (split, key)
    assert (ours / "test/text.txt").read_bytes() == (one / "test/text.txt").read_bytes()
    assert a["vocab_sha256"] == b["vocab_sha256"] and a["sources_sha256"] == b["sources_sha256"]


def test_a_single_file_cut_into_pieces_gives_the_same_corpus(wiki_run, wiki_parts, tmp_path):
    """One multistream file in 4 pieces and 4 buckets: the very corpus of 3 parts in 3 buckets."""
    header, parts, footer = wiki_parts
    mirror = write_mirror(tmp_path / "mirror", "enwiki", WIKI_DATE,
                          dump_files("enwiki", WIKI_DATE, [sum(parts, [])], header, footer))
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, "results/corpus/corpus.raw.txt", config=_wiki_config(str(mirror), 4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((work / "results/parts/extracted").glob("*/*"))) == 4
    for name in ("corpus.raw.txt", "corpus.articles.tsv", "corpus.train.txt", "vocab.txt"):
        assert file_digest(work / "results/corpus" / name) == file_digest(wiki_run / "results/corpus" / name), name


def test_pieces_start_at_index_offsets_and_keep_the_header(wiki_parts, tmp_path):
    header, parts, footer = wiki_parts
    files = dump_files("enwiki", WIKI_DATE, [sum(parts, [])], header, footer, per_stream=10)
    data_name = next(n for n in files if "multistream.xml" in n)
    index = tmp_path / "index.bz2"
    index.write_bytes(files[data_name.replace("multistream.xml", "multistream-index.txt")])
    offsets = stream_offsets(index, len(files[data_name]))
    assert len(offsets) == 21 and offsets[0] == len(bz2.compress(header.encode()))
    pieces = [piece_ranges(offsets, len(files[data_name]), k, 3) for k in range(3)]
    assert all(p[0] == (0, offsets[0]) for p in pieces)
    assert [p[1][0] for p in pieces] == [offsets[0], offsets[7], offsets[14]]
    assert pieces[0][1][1] == pieces[1][1][0] and pieces[2][1][1] == len(files[data_name])


@pytest.mark.reliability
def test_a_truncated_part_is_one_error_naming_it(wiki_parts, tmp_path, sample_run):
    header, parts, footer = wiki_parts
    data, _ = multistream(header, parts[0], footer, 10)
    dump = tmp_path / "part.xml.bz2"
    dump.write_bytes(data[: len(data) // 2])
    proc = gpt2("extract-chunk", "--dump", str(dump), "--piece", "0", "--pieces", "1", "--expanda",
                str(sample_run / "results/expanda"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {dump}: the bz2 data ends early (truncated file); "
                                                    "fetch it again")
    assert not (tmp_path / "out").exists()


@pytest.mark.reliability
@pytest.mark.parametrize("lines, message", [
    (["600:10:A\n", "900:11:B\n", "700:12:C\n"], "line 3 offset 700 is below the line before's"),
    (["600:10:A\n", "x:11:B\n"], "line 2 is not offset:page id:title"),
    (["600:ten:A\n"], "line 1 is not offset:page id:title"),
    (["600:10:A\n", "99999:11:B\n"], "line 2 offset 99,999 is past the end of the 1,000-byte data file"),
    ([], "the index lists no streams"),
])
def test_a_damaged_index_is_one_line_naming_the_file_and_line(tmp_path, lines, message):
    index = tmp_path / "index.txt.bz2"
    index.write_bytes(bz2.compress("".join(lines).encode()))
    with pytest.raises(UserError, match=re.escape(f"{index}")) as caught:
        stream_offsets(index, 1000)
    assert message in str(caught.value)


@pytest.mark.reliability
def test_buckets_at_their_maximum_stay_within_the_open_files_limit(tmp_path):
    """corpus.buckets = 4096 buckets scattered and gathered with a soft limit of 64 open files."""
    import resource

    from gpt2.corpus import ARTICLE_MARK, OpenFiles, scatter

    chunks = CorpusParams.__dataclass_fields__["buckets"].metadata["maximum"]
    text = tmp_path / "extracted.txt"
    text.write_bytes(b"".join(ARTICLE_MARK + f"{i}\tT{i}\n".encode() + f"Sentence {i}.\n".encode()
                              for i in range(1, 5001)))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        stats = scatter(text, tmp_path, CorpusParams(buckets=chunks), Audit())
        files = [tmp_path / f"{b}.txt" for b in range(chunks)]
        with OpenFiles(files, limit=32) as handles:
            heads = [handles.get(b).readline() for b in range(chunks)]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert stats["articles"] == 5000 and sum(stats["bucket_articles"]) == 5000 and len(files) == chunks
    assert sum(1 for h in heads if h.startswith(ARTICLE_MARK)) == sum(1 for c in stats["bucket_articles"] if c)


# --- cleaning: what the model reads (gpt2.wikitext, gpt2.templates) --------------------------------

EN = Site.from_siteinfo("en", {6: "File", -2: "Media", 14: "Category", 10: "Template"})
KO = Site.from_siteinfo("ko", {6: "파일", -2: "미디어", 14: "분류", 10: "틀"})


@pytest.mark.parametrize("wikitext, text", [
    # templates whose words belong in the sentence, by their rule
    ("Napoleon is called {{lang|fr|César}}, the French form of Caesar.", "Napoleon is called César, the French form of Caesar."),
    ("It is {{lang-fr|la France}} in French.", "It is la France in French."),
    ("The river is {{convert|1300|mi|km}} long.", "The river is 1300 miles long."),
    ("The range is {{convert|3|to|5|m}} wide.", "The range is 3 to 5 m wide."),
    ("{{As of|2015}}, the population is around 32 million.", "As of 2015, the population is around 32 million."),
    ("The figure is, {{as of|2010|lc=y}}, the highest.", "The figure is, as of 2010, the highest."),
    ("She was born on {{birth date|1905|02|02}} in a town.", "She was born on February 2, 1905 in a town."),
    ("She was born on {{Birth date|df=yes|1885|4|3}} in a town.", "She was born on 3 April 1885 in a town."),
    ("He ruled from {{nowrap|[[Pope Clement IV|Clement IV]]}} onward.", "He ruled from Clement IV onward."),
    ("It is called {{Nihongo|'''Aikido'''|合気道|Aikidō}} in Japan.", "It is called Aikido in Japan."),
    ("It dates back to 3500 {{BC}}.", "It dates back to 3500 BC."),
    # annotations go without a trace; an unknown template that left a gap makes a hole
    ("The claim is old.{{citation needed|date=May 2020}} It was made twice.", "The claim is old. It was made twice."),
    ("Another translation has him as {{unknown|x}}.", "Another translation has him as \x02."),
    ("A flag {{unknown|x}} flew over the town.", "A flag flew over the town."),
    ("{{unknown|2008}}, most women had access.", "\x02, most women had access."),
    # links keep their label; file links go with their (nested) captions, categories go
    ("A [[fetus|foetus]] and an [[embryo]]s grow.", "A foetus and an embryos grow."),
    ("[[File:Newman.png|thumb|right|200px|Newman projections of [[ethane]].]]The molecule turns.", "The molecule turns."),
    ("[[Image:a.jpg|thumb|A caption.]] Text stays.", "Text stays."),
    ("The text stays.[[Category:Chemistry]]", "The text stays."),
    ("See the [[:Category:Chemistry|chemistry category]] for more.", "See the chemistry category for more."),
    # references, comments, tables, tags; parenthesised text goes and leaves no space before punctuation
    ("The war began.<ref name=a>{{cite web|url=x}}</ref> It ended.<ref name=a/>", "The war began. It ended."),
    ("Visible<!-- hidden --> text is kept.", "Visible text is kept."),
    ("{| class=wikitable\n|-\n| a || b.\n|}\nAfter the table.", "After the table."),
    ("The Missouri Compromise (1820), was repealed.", "The Missouri Compromise, was repealed."),
    ("A '''bold''' and ''italic'' word&nbsp;here.", "A bold and italic word here."),
    ("An [http://example.org external link] is text.", "An external link is text."),
    ("The area is <math>\\pi r^2</math> for a circle.", "The area is \x02 for a circle."),
    ("== Heading ==\n* a list item without a stop\n* A list item with one.", "A list item with one."),
])
def test_each_cleaning_rule(wikitext, text):
    assert Cleaner(EN, Audit()).clean(wikitext) == text


def test_korean_file_links_and_templates_by_the_dumps_own_names():
    cleaner = Cleaner(KO, Audit())
    assert cleaner.clean("[[파일:서울.jpg|섬네일|서울의 [[야경]]]]서울은 수도이다.") == "서울은 수도이다."
    assert cleaner.clean("[[그림:부산.png|섬네일|부산]]부산은 항구 도시이다.") == "부산은 항구 도시이다."
    assert cleaner.clean("그는 {{출생일|1950|5|12}}에 태어났다.") == "그는 1950년 5월 12일에 태어났다."
    assert cleaner.clean("[[분류:도시]]한강은 길다.") == "한강은 길다."
    assert cleaner.audit.counts["removed bytes"]["file links and galleries"] > 0


def _page(title: str, text: str | None, redirect: bool = False, ns: str = "0", size: int = 0) -> Page:
    return Page(ns, "1", title, text, size or len((text or "").encode()), (text or "")[:32], redirect)


def test_pages_are_admitted_by_element_template_and_setting():
    for drop_lists, kept in ((False, True), (True, False)):
        audit = Audit()
        assert admit(_page("List of rivers", "Rivers."), EN, drop_lists, audit) is kept
        assert audit.counts["pages" if kept else "pages dropped"]["list pages kept" if kept else "list page"] == 1
    audit = Audit()
    assert not admit(_page("Lyon", "#WEITERLEITUNG [[Paris]]", redirect=True), EN, False, audit)
    assert not admit(_page("Lyon", "#REDIRECT [[Paris]]"), EN, False, audit)
    assert not admit(_page("Mercury", "'''Mercury''' may be:\n{{Disambiguation|geo}}"), EN, False, audit)
    assert not admit(_page("Mercury", "'''Mercury''' may be:\n{{Hospital disambiguation}}"), EN, False, audit)
    assert not admit(_page("Big", None, size=10**8), EN, False, audit)
    assert not admit(_page("Talk:Paris", "Text.", ns="1"), EN, False, audit)
    assert audit.counts["pages dropped"] == {"redirect": 2, "disambiguation": 2, "over the size cap": 1,
                                             "other namespace": 1}
    assert admit(_page("Paris", "Paris is a city.{{About|the city}}"), EN, False, audit)


def test_the_sample_reads_as_text_debris_under_half_a_percent(sample_run):
    """The checker's classes (tests/debris.py) on every corpus line; no hole mark is ever written."""
    text = (sample_run / "results/corpus/corpus.raw.txt").read_text(encoding="utf-8")
    assert HOLE not in text and GAP not in text
    rate, per_class, examples = debris.measure(text.splitlines())
    assert rate < 0.005, (per_class, examples)
    audit = json.loads((sample_run / "results/corpus/audit.json").read_text())
    assert audit["sentences"]["kept"] == len(text.splitlines()) and audit["sentences dropped"]["hole"] > 0
    assert set(audit["removed bytes"]) >= {"templates", "tables", "references", "file links and galleries", "comments"}
    assert len(audit["templates dropped"]) == 51 and audit["templates rendered"]["convert"] > 100
    assert [e["title"] for e in audit["examples"]] and all(e["before"] and e["after"] for e in audit["examples"])


def test_removed_bytes_are_counted_once_under_the_outermost_kind():
    audit = Audit()
    wikitext = "{{Infobox|a=<ref>{{cite web|x}}</ref>|b=[[File:x.png|c]]}}Text is kept.<!-- note -->"
    assert Cleaner(EN, audit).clean(wikitext) == "Text is kept."
    removed = audit.counts["removed bytes"]
    assert removed == {"references": len("<ref>{{cite web|x}}</ref>"), "file links and galleries": len("[[File:x.png|c]]"),
                       "templates": len("{{Infobox|a=|b=}}"), "comments": len("<!-- note -->")}
    assert sum(removed.values()) + len("Text is kept.") == len(wikitext)
    assert audit.counts["templates dropped"] == {"infobox": len("{{Infobox|a=|b=}}")}


def test_every_template_rule_is_documented():
    doc = (ROOT / "docs/pipeline.md").read_text(encoding="utf-8")
    section = doc[doc.index("**Template rules**"):doc.index("**Pages.**")]
    names = [*RULES, *(name for rules in LANGUAGE_RULES.values() for name in rules)]
    assert [name for name in names if f"`{name}`" not in section] == []


@pytest.mark.parametrize("hostile", ["[[" * 100_000 + "}}" * 100_000, "{{lang|" * 100_000 + "}}" * 100_000,
                                     "[[x|y " * 100_000 + "]]" * 100_000, "<ref>" * 100_000, "(" * 100_000 + ")",
                                     "[//x " * 100_000, "<!--" * 100_000])
def test_hostile_wikitext_takes_linear_work(hostile):
    """Deep nesting, unclosed constructs and tags: each step reads ahead a bounded amount (a quadratic
    cleaner would take hours on these 0.2-0.7 MB pages; this one takes well under a second each)."""
    audit = Audit()
    text = Cleaner(EN, audit).clean(hostile + "\nThe article goes on.")
    assert text.endswith("The article goes on.") or hostile.startswith("<!--")


# --- corpus.tokenizer: bpe, GPT-2's byte-level scheme -----------------------------------------------

BPE = {"corpus": {"tokenizer": "bpe", "vocab_size": 4000}}
TINY_BPE = {**BPE, "train": {"steps": 12, "batch_tokens": 2048, "micro_batch": 16, "lr": 0.003, "warmup_ratio": 0.17,
                             "eval_every": 12, "eval_tokens": 2048, "checkpoint_every": 12}}
MIXED = "Mixed: 한국어 텍스트, ελληνικά, emoji 🎉🧪, a\ttab, \x07bell and \x00nul,  two  spaces, é vs e\u0301."


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """The sample built with the BPE, trained (tiny, a few steps), evaluated and exported."""
    work = tmp_path_factory.mktemp("bpe")
    proc = snakemake(work, "results/eval_tiny.json", "results/hf/tiny", config=TINY_BPE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_bpe_is_lossless_on_every_test_line_and_has_no_unknown_token(bpe_run):
    from gpt2.vocab import ENDOFTEXT, load_tokenizer

    tokenizer = load_tokenizer(bpe_run / "results/corpus/tokenizer.json")
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    assert len(vocab) == 4000 and vocab[ENDOFTEXT] == 0 and "<unk>" not in vocab and tokenizer.model.unk_token is None
    test = [(row, lines) for row, lines in _article_lines(bpe_run) if row["split"] == "test"]
    assert test and all(tokenizer.decode(tokenizer.encode(line).ids) == line for _, lines in test for line in lines)
    assert tokenizer.decode(tokenizer.encode(MIXED).ids) == MIXED
    manifest = json.loads((bpe_run / "results/shards/manifest.json").read_text())
    assert manifest["special_ids"] == {ENDOFTEXT: 0} and manifest["eos_id"] == 0
    assert all(s["unk_tokens"] == 0 and s["missing_from_vocab"] == 0 for s in manifest["splits"].values())
    # The shards' test documents decode to exactly their articles' text: lines joined by spaces.
    from gpt2.shards import TokenStream

    stream = TokenStream(bpe_run / "results/shards/manifest.json", "test")
    ids = np.asarray(stream.window(0, len(stream)))
    docs = np.split(ids, np.flatnonzero(ids == 0) + 1)[:-1]
    assert [tokenizer.decode(d[:-1].tolist()) for d in docs] == [" ".join(lines) for _, lines in test]
    assert sum(len(" ".join(lines).encode()) + 1 for _, lines in test) == manifest["splits"]["test"]["bytes"]


def test_bpe_tokenizer_and_shards_are_byte_identical_on_a_second_build(bpe_run, tmp_path):
    proc = snakemake(tmp_path, "results/shards/manifest.json", config={**BPE, "corpus": {**BPE["corpus"], "threads": 1}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = ["corpus/tokenizer.json", "corpus/corpus.train.txt", "shards/train/train_000000.bin",
             "shards/test/test_000000.bin"]
    assert all(file_digest(tmp_path / "results" / f) == file_digest(bpe_run / "results" / f) for f in files)


def test_bpe_export_loads_with_autotokenizer_and_generates_cased_text_in_a_pipeline(bpe_run):
    from transformers import AutoTokenizer, pipeline

    folder = bpe_run / "results/hf/tiny"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.is_fast and tokenizer.decode(tokenizer.encode(MIXED)) == MIXED
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.unk_token is None
    generate = pipeline("text-generation", model=str(folder))
    text = generate("The History of Paris", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The History of Paris") and len(text) > len("The History of Paris")
    assert "byte-level BPE" in (folder / "README.md").read_text()
    report = json.loads((bpe_run / "results/eval_tiny.json").read_text())
    manifest = json.loads((bpe_run / "results/shards/manifest.json").read_text())
    assert report["test_bytes"] == manifest["splits"]["test"]["bytes"] and report["bits_per_byte"] > 0
    assert report["tokenizer_round_trip"] is True  # the byte-level BPE gives the text back
    proc = gpt2("evaluate", "--hf", str(folder), "--shards", str(bpe_run / "results/shards/manifest.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    hf = json.loads(proc.stdout)
    assert hf["tokenizer_round_trip"] is True and hf["round_trip_failures"] == 0 and "warning" not in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("kss") is None, reason="kss is not installed")
def test_korean_goes_through_the_bpe_end_to_end(tmp_path):
    from gpt2.vocab import load_tokenizer

    dump = _korean_dump(tmp_path / "kowiki-test.xml.bz2")
    config = {**TINY_BPE, "dump": {"source": "path", "path": str(dump)},
              "corpus": {"tokenizer": "bpe", "vocab_size": 400, "min_length": 10}}
    proc = snakemake(tmp_path, "results/eval_tiny.json", config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokenizer = load_tokenizer(tmp_path / "results/corpus/tokenizer.json")
    raw = (tmp_path / "results/corpus/corpus.raw.txt").read_text(encoding="utf-8").splitlines()
    assert all(tokenizer.decode(tokenizer.encode(line).ids) == line for line in raw)
    assert json.loads((tmp_path / "results/eval_tiny.json").read_text())["bits_per_byte"] > 0


def test_an_input_vocab_of_the_other_kind_is_refused_naming_the_setting(tmp_path):
    from gpt2.corpus import _input_vocab

    (tmp_path / "vocab.txt").write_text("<unk>\n<s>\n</s>\n<pad>\n")
    with pytest.raises(UserError, match="is not a bpe vocabulary: .* set corpus.tokenizer to match"):
        _input_vocab(CorpusParams(tokenizer="bpe", input_vocab=str(tmp_path / "vocab.txt")))
