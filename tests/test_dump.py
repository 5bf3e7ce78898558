"""Stage 1: the dump -- sample, real HTTP download from a loopback server, local path, inspection."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from conftest import gpt2, serve, snakemake, write_dump
from gpt2 import UserError
from gpt2.dump import dump_name, info_path, inspect_dump, partial_path
from gpt2.params import DumpParams
from wikidump import three_part_dump

DUMP_FILE = "enwiki-20240801-pages-articles-multistream1.xml-p1p41242.bz2"


@pytest.fixture
def server(sample_dump):
    data = sample_dump.read_bytes()
    sums = f"{hashlib.sha1(data).hexdigest()}  {DUMP_FILE}\n{'0' * 40}  enwiki-20240801-other.xml.bz2\n"
    yield from serve({f"/enwiki/20240801/{DUMP_FILE}": data,
                      "/enwiki/20240801/enwiki-20240801-sha1sums.txt": sums.encode()})


def _fetch_url(server, out: Path, *extra: str):
    return gpt2("fetch-dump", "--source", "url", "--url", f"{server.base}/enwiki/20240801/{DUMP_FILE}",
                "--out", str(out), "--timeout_s", "10", *extra)


def test_names_derive_from_the_source():
    assert dump_name(DumpParams(source="sample")) == "enwiki-sample"
    assert dump_name(DumpParams(source="url", url=f"https://x/{DUMP_FILE}")) == DUMP_FILE.removesuffix(".bz2")
    assert dump_name(DumpParams(source="path", path="/data/kowiki-latest-pages-articles.xml.bz2")) == (
        "kowiki-latest-pages-articles")
    assert dump_name(DumpParams(source="url", url="https://x/a.xml.bz2", name="mine")) == "mine"


def test_full_download_is_verified_against_published_sha1sums(server, tmp_path, sample_dump):
    out = tmp_path / "d.xml.bz2"
    proc = _fetch_url(server, out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == sample_dump.read_bytes()
    assert "sha1" in proc.stderr and "verified" in proc.stderr
    info = json.loads(info_path(out).read_text())
    assert info == {"lang": "en", "pages": 206, "articles": 106, "source": "url", "file": str(out),
                    "sha1": hashlib.sha1(sample_dump.read_bytes()).hexdigest()}
    assert not partial_path(out).exists()


@pytest.mark.reliability
def test_cut_connection_resumes_with_only_the_rest(server, tmp_path, sample_dump):
    size = sample_dump.stat().st_size
    server.cut_at, server.cuts_left = size // 2, 1
    out = tmp_path / "d.xml.bz2"
    proc = _fetch_url(server, out, "--retries", "2")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == sample_dump.read_bytes()
    first, second = server.log
    assert first == {"range": None, "sent": size // 2}
    assert second == {"range": f"bytes={size // 2}-", "sent": size - size // 2}
    assert f"resuming d.xml.bz2.part at byte {size // 2:,}" in proc.stderr


@pytest.mark.reliability
def test_resume_across_runs_after_giving_up(server, tmp_path, sample_dump):
    size = sample_dump.stat().st_size
    server.cut_at, server.cuts_left = 1000, 1
    out = tmp_path / "d.xml.bz2"
    proc = _fetch_url(server, out, "--retries", "0")
    assert proc.returncode == 2 and not out.exists()
    assert "run again to resume from byte 1,000" in proc.stderr.strip().splitlines()[-1]
    proc = _fetch_url(server, out, "--retries", "0")
    assert proc.returncode == 0, proc.stderr
    assert server.log[-1] == {"range": "bytes=1000-", "sent": size - 1000}


@pytest.mark.reliability
def test_wrong_checksum_leaves_nothing_that_looks_done(server, tmp_path):
    out = tmp_path / "d.xml.bz2"
    proc = _fetch_url(server, out, "--sha1", "f" * 40)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(out) in line and "f" * 40 in line and "sha1 mismatch" in line
    assert not out.exists() and not info_path(out).exists() and not partial_path(out).exists()
    assert partial_path(out).with_suffix(".rejected").exists()


@pytest.mark.reliability
def test_missing_published_sums_asks_for_a_checksum(server, tmp_path):
    del server.files["/enwiki/20240801/enwiki-20240801-sha1sums.txt"]
    proc = _fetch_url(server, tmp_path / "d.xml.bz2")
    assert proc.returncode == 2 and "set dump.sha1 or dump.md5" in proc.stderr


def test_local_path_is_linked_and_left_untouched(tmp_path, sample_dump):
    mine = tmp_path / "mine.xml.bz2"
    mine.write_bytes(sample_dump.read_bytes())
    out = tmp_path / "resources" / "mine.xml.bz2"
    proc = gpt2("fetch-dump", "--source", "path", "--path", str(mine), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == mine.read_bytes() and mine.exists()
    proc = gpt2("fetch-dump", "--source", "path", "--path", str(mine), "--out", str(out), "--md5", "0" * 32)
    assert proc.returncode == 2 and "md5 mismatch" in proc.stderr and mine.exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"<mediawiki/>"), "not a readable bz2 file"),
    (lambda p: p.write_bytes(p.with_name("good").read_bytes()[:5000]), "truncated dump"),
    (lambda p: write_dump(p, []).write_bytes(__import__("bz2").compress(b"<html><body/></html>")),
     "not a MediaWiki export"),
    (lambda p: p.write_bytes(__import__("bz2").compress(b"<mediawiki><page>")), "not well-formed XML"),
    (lambda p: write_dump(p, [(14, "Category:X", "Some category text here.")]), "no main-namespace articles"),
    (lambda p: write_dump(p, [(0, "Paris", "Paris est la capitale de la France.")], lang="fr"),
     "language 'fr' is not supported"),
])
@pytest.mark.reliability
def test_bad_dumps_are_one_clear_error(tmp_path, sample_dump, make, message):
    (tmp_path / "good").write_bytes(sample_dump.read_bytes())
    bad = tmp_path / "bad.xml.bz2"
    make(bad)
    with pytest.raises(UserError, match=message):
        inspect_dump(bad)


@pytest.mark.reliability
@pytest.mark.parametrize("cut", [1, 4096, 0.37, 0.5, -1])
def test_download_cut_at_any_offset_resumes_to_the_right_file(server, tmp_path, sample_dump, cut):
    data = sample_dump.read_bytes()
    offset = cut if isinstance(cut, int) and cut > 0 else len(data) - 1 if cut == -1 else int(len(data) * cut)
    server.cut_at, server.cuts_left = offset, 1
    out = tmp_path / "d.xml.bz2"
    proc = _fetch_url(server, out, "--retries", "1")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data and server.log[1]["range"] == f"bytes={offset}-"


@pytest.mark.reliability
def test_a_server_sending_wrong_bytes_is_caught(server, tmp_path, sample_dump):
    path = f"/enwiki/20240801/{DUMP_FILE}"
    good = server.files[path]
    server.files[path] = good[:1000] + bytes(b ^ 0xFF for b in good[1000:1010]) + good[1010:]
    out = tmp_path / "d.xml.bz2"
    proc = _fetch_url(server, out)  # the published sha1sums are those of the good file
    assert proc.returncode == 2 and "sha1 mismatch" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists() and not partial_path(out).exists()


# --- whole wikis: dumpstatus.json, parts, one fetch job per file -----------------------------

WIKI_DATE = "20260101"


@pytest.fixture
def wiki_server():
    """enwiki with a finished three-part dump and a newer one still running, over loopback HTTP."""
    files = three_part_dump("enwiki", WIKI_DATE)
    served = {f"/enwiki/{WIKI_DATE}/{name}": data for name, data in files.items()}
    running = {"jobs": {"articlesmultistreamdump": {"status": "in-progress", "files": {}}}}
    served["/enwiki/20260201/dumpstatus.json"] = json.dumps(running).encode()
    served["/enwiki/"] = b'<a href="20251201/">20251201/</a> <a href="20260101/">20260101/</a> <a href="20260201/">'
    yield from serve(served)


def _list(server, tmp_path, *flags: str):
    out = tmp_path / "files.json"
    proc = gpt2("list-dump", "--source", "wiki", "--wiki", "enwiki", "--mirror", server.base, "--out", str(out),
                "--timeout_s", "10", *flags)
    return proc, out


def test_latest_is_the_newest_finished_dump_and_parts_pick_files(wiki_server, tmp_path):
    proc, out = _list(wiki_server, tmp_path, "--parts", "2-3")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(out.read_text())
    assert listing["date"] == WIKI_DATE  # 20260201 is still running
    assert [p["part"] for p in listing["parts"]] == [2, 3]
    assert all(p["index"] in listing["files"] and p["file"] in listing["files"] for p in listing["parts"])
    assert len(listing["files"]) == 4 and all(len(m["sha1"]) == 40 for m in listing["files"].values())


@pytest.mark.parametrize("flags, message", [
    (("--parts", "4"), "error: dump.parts 4: the dump has no part 4 (it has 1-3)"),
    (("--date", "20260201"), "error: dump.wiki enwiki: no finished articlesmultistreamdump in dumpstatus.json of "
                             "20260201; set dump.date to a finished dump"),
    (("--date", "20240101"), "answered HTTP 404"),
])
def test_listing_errors_name_the_setting(wiki_server, tmp_path, flags, message):
    proc, out = _list(wiki_server, tmp_path, *flags)
    assert proc.returncode == 2 and not out.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.reliability
def test_a_wrong_sha1_fails_that_part_alone(tmp_path):
    files = three_part_dump("enwiki", WIKI_DATE)
    bad = next(name for name in files if "multistream2.xml" in name)
    status = json.loads(files["dumpstatus.json"])
    status["jobs"]["articlesmultistreamdump"]["files"][bad]["sha1"] = "0" * 40
    files["dumpstatus.json"] = json.dumps(status).encode()
    config = {"dump": {"source": "wiki", "wiki": "enwiki", "date": WIKI_DATE, "mirror": ""},
              "corpus": {"chunks": 3, "threads": 1}}
    for server in serve({f"/enwiki/{WIKI_DATE}/{name}": data for name, data in files.items()}):
        config["dump"]["mirror"] = server.base
        proc = snakemake(tmp_path, "results/corpus/corpus.raw.txt", config=config, extra=("--keep-going",))
    assert proc.returncode != 0
    errors = (tmp_path / f"results/logs/fetch_part/{bad}.log").read_text().strip().splitlines()[-1]
    assert errors.startswith(f"error: {bad}: sha1 mismatch, expected {'0' * 40} but the file has ")
    assert not (tmp_path / f"resources/dumps/enwiki-{WIKI_DATE}" / bad).exists()
    done = sorted(p.parent.parent.name for p in (tmp_path / "results/wiki/extracted").glob("*/0/stats.json"))
    assert done == sorted(name for name in files if re.search(r"multistream[13]\.xml", name))
