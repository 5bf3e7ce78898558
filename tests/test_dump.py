"""Stage 1: the dump -- sample, real HTTP download from a loopback server, local path, inspection."""

from __future__ import annotations

import bz2
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, gpt2, serve, snakemake, write_dump
from gpt2 import UserError
from gpt2.download import partial_path
from gpt2.dump import dump_name, file_patterns, info_path, inspect_dump
from gpt2.params import DumpParams
from wikidump import three_part_dump, write_mirror

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
    assert info == {"lang": "en", "pages": 206, "articles": 106, "largest_page_bytes": 180822, "source": "url",
                    "file": str(out), "sha1": hashlib.sha1(sample_dump.read_bytes()).hexdigest()}
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
    assert proc.returncode == 2 and "set dump.sha1 or dump.md5, or dump.allow_unverified: true" in proc.stderr
    assert not server.log  # refused before a byte of the dump was fetched


def test_local_path_is_linked_and_left_untouched(tmp_path, sample_dump):
    mine = tmp_path / "mine.xml.bz2"
    mine.write_bytes(sample_dump.read_bytes())
    out = tmp_path / "resources" / "mine.xml.bz2"
    proc = gpt2("fetch-dump", "--source", "path", "--path", str(mine), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == mine.read_bytes() and mine.exists()
    proc = gpt2("fetch-dump", "--source", "path", "--path", str(mine), "--out", str(out), "--md5", "0" * 32)
    assert proc.returncode == 2 and "md5 mismatch" in proc.stderr and mine.exists()
    proc = gpt2("fetch-dump", "--source", "path", "--path", str(out), "--out", str(out))
    assert proc.returncode == 2 and "is the output itself" in proc.stderr and out.read_bytes() == mine.read_bytes()


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
    (("--date", "20240101"), "no enwiki/20240101/dumpstatus.json there"),
])
def test_listing_errors_name_the_setting(wiki_server, tmp_path, flags, message):
    proc, out = _list(wiki_server, tmp_path, *flags)
    assert proc.returncode == 2 and not out.exists()
    *before, last = proc.stderr.strip().splitlines()
    assert last.startswith("error: ") and message in last
    assert all(line.startswith("warning: ") and "is plain http" in line for line in before)


@pytest.mark.reliability
def test_a_wrong_sha1_fails_that_part_alone(tmp_path):
    files = three_part_dump("enwiki", WIKI_DATE)
    bad = next(name for name in files if "multistream2.xml" in name)
    status = json.loads(files["dumpstatus.json"])
    status["jobs"]["articlesmultistreamdump"]["files"][bad]["sha1"] = "0" * 40
    files["dumpstatus.json"] = json.dumps(status).encode()
    config = {"dump": {"source": "wiki", "wiki": "enwiki", "date": WIKI_DATE, "mirror": ""},
              "corpus": {"extract_jobs": 3, "buckets": 3, "threads": 1}}
    for server in serve({f"/enwiki/{WIKI_DATE}/{name}": data for name, data in files.items()}):
        config["dump"]["mirror"] = server.base
        proc = snakemake(tmp_path, "results/corpus/corpus.raw.txt", config=config, extra=("--keep-going",))
    assert proc.returncode != 0
    errors = (tmp_path / f"results/logs/fetch_part/{bad}.log").read_text().strip().splitlines()[-1]
    assert errors.startswith(f"error: {bad}: sha1 mismatch, expected {'0' * 40} but the file has ")
    assert not (tmp_path / f"resources/dumps/enwiki-{WIKI_DATE}" / bad).exists()
    done = sorted(p.parent.parent.name for p in (tmp_path / "results/parts/extracted").glob("*/0/stats.json"))
    assert done == sorted(name for name in files if re.search(r"multistream[13]\.xml", name))


# --- what a broken or hostile server, mirror or input can do ----------------------------------


def _last_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.reliability
@pytest.mark.parametrize("misbehaviour", ["ignore_range", "range_from_zero"])
def test_a_resume_the_server_answers_wrongly_starts_over(server, tmp_path, sample_dump, misbehaviour):
    """A 200 to a Range request, or a 206 from byte 0, is never appended to what was there."""
    data = sample_dump.read_bytes()
    out = tmp_path / "d.xml.bz2"
    partial_path(out).parent.mkdir(parents=True)
    partial_path(out).write_bytes(data[:1000])
    setattr(server, misbehaviour, True)
    proc = _fetch_url(server, out, "--retries", "2")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data
    assert server.log[0]["range"] == "bytes=1000-"


@pytest.mark.reliability
def test_a_416_over_a_stale_partial_file_starts_over(server, tmp_path, sample_dump):
    data = sample_dump.read_bytes()
    out = tmp_path / "d.xml.bz2"
    partial_path(out).parent.mkdir(parents=True)
    partial_path(out).write_bytes(data + b"stale bytes of another file")
    proc = _fetch_url(server, out, "--retries", "2")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data and "a stale part: starting d.xml.bz2.part over" in proc.stderr


@pytest.mark.reliability
def test_503_and_429_are_retried_with_backoff(server, tmp_path, sample_dump):
    server.statuses = [503, 429]
    out = tmp_path / "d.xml.bz2"
    proc = _fetch_url(server, out, "--retries", "2")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == sample_dump.read_bytes()
    assert "HTTP 503" in proc.stderr and "HTTP 429" in proc.stderr and len(server.log) == 3


@pytest.mark.reliability
def test_an_unreachable_address_is_one_line_at_once(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = gpt2("fetch-dump", "--source", "url", "--url", f"http://127.0.0.1:{port}/enwiki-20240801-x.xml.bz2",
                "--sha1", "0" * 40, "--out", str(tmp_path / "d.xml.bz2"), "--retries", "5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert _last_line(proc).startswith(f"error: cannot reach http://127.0.0.1:{port}/") and "refused" in proc.stderr
    assert "retrying" not in proc.stderr


@pytest.mark.reliability
def test_a_redirect_from_https_to_http_is_refused():
    import requests

    from gpt2.download import _refuse_downgrade

    resp = requests.Response()
    resp.status_code, resp.url = 302, "https://dumps.example/enwiki/x.bz2"
    resp.headers["Location"] = "http://evil.example/x.bz2"
    with pytest.raises(UserError, match="a redirect from https to an unencrypted address is refused"):
        _refuse_downgrade(resp)
    resp.headers["Location"] = "/enwiki/y.bz2"  # relative: stays on https
    _refuse_downgrade(resp)


def test_a_plain_http_mirror_is_said_to_be_unauthenticated(server, tmp_path):
    proc = _fetch_url(server, tmp_path / "d.xml.bz2")
    assert proc.returncode == 0 and "is plain http: nothing authenticates what it sends" in proc.stderr


def test_the_deadline_stops_a_download_for_a_rerun_to_resume(server, tmp_path, sample_dump):
    out = tmp_path / "d.xml.bz2"
    proc = _fetch_url(server, out, "--deadline_s", "0.000001")
    assert proc.returncode == 2 and "not done within dump.deadline_s" in _last_line(proc)
    assert not out.exists() and partial_path(out).exists()
    assert _fetch_url(server, out).returncode == 0 and out.read_bytes() == sample_dump.read_bytes()


@pytest.mark.reliability
def test_a_huge_listing_is_refused_by_its_size(tmp_path):
    for srv in serve({"/enwiki/20260101/dumpstatus.json": b" " * (17 << 20)}):
        proc, out = _list(srv, tmp_path, "--date", "20260101")
    assert proc.returncode == 2 and "too big for a listing" in _last_line(proc) and not out.exists()


def _mirror(tmp_path: Path, edit=None) -> tuple[Path, dict]:
    """A local mirror of the three-part dump; `edit(files, status_files)` changes it first."""
    files = three_part_dump("enwiki", WIKI_DATE)
    status = json.loads(files["dumpstatus.json"])
    if edit is not None:
        edit(files, status["jobs"]["articlesmultistreamdump"]["files"])
    files["dumpstatus.json"] = json.dumps(status).encode()
    return write_mirror(tmp_path / "mirror", "enwiki", WIKI_DATE, files), files


def _rename_first(files: dict, listed: dict, new: str) -> str:
    old = next(n for n in listed if "multistream1.xml" in n)
    listed[new], files[new] = listed.pop(old), files.pop(old)
    return new


@pytest.mark.reliability
@pytest.mark.parametrize("name", [
    f"enwiki-{WIKI_DATE}-$(touch PWNED)-pages-articles-multistream1.xml-p1p41242.bz2",
    f"dewiki-{WIKI_DATE}-pages-articles-multistream1.xml-p1p41242.bz2",
    f"enwiki-{WIKI_DATE}-pages-articles-multistream1.xml-p1p41242.bz2/../../x.bz2",
    f"x-enwiki-{WIKI_DATE}-pages-articles-multistream1.xml-p1p41242.bz2",
])
def test_a_mirror_listing_a_foreign_name_is_refused_whole(tmp_path, name):
    mirror, _ = _mirror(tmp_path, lambda files, listed: listed.update({name: {"size": 1, "sha1": "0" * 40}}))
    work = tmp_path / "work"
    work.mkdir()
    config = {"dump": {"source": "wiki", "wiki": "enwiki", "date": WIKI_DATE, "mirror": str(mirror)},
              "corpus": {"extract_jobs": 3, "buckets": 3, "threads": 1}}
    proc = snakemake(work, "results/corpus/corpus.raw.txt", config=config)
    assert proc.returncode != 0 and not (work / "PWNED").exists() and not (tmp_path / "PWNED").exists()
    error = (work / "results/logs/list_dump.log").read_text().strip().splitlines()[-1]
    assert error.startswith(f"error: {mirror}/enwiki/{WIKI_DATE}/dumpstatus.json lists {name!r}, which is not a ")
    assert not (work / f"resources/dumps/enwiki-{WIKI_DATE}/files.json").exists()


def test_file_name_patterns_match_whole_names_only():
    data, index = file_patterns("enwiki", "20240801")
    assert data.fullmatch("enwiki-20240801-pages-articles-multistream.xml.bz2")
    assert data.fullmatch("enwiki-20240801-pages-articles-multistream27.xml-p69474240p71474239.bz2")
    assert index.fullmatch("enwiki-20240801-pages-articles-multistream-index27.txt-p69474240p71474239.bz2")
    assert not data.fullmatch("enwiki-20240801-pages-articles-multistream1.xml-p1p41242.bz2.exe")
    assert not data.fullmatch("kowiki-20240801-pages-articles-multistream.xml.bz2")
    assert not index.fullmatch("enwiki-20240801-pages-articles-multistream1.xml-p1p41242.bz2")


def _fetch_first(tmp_path: Path, mirror: Path | str, *flags: str):
    listing = tmp_path / "files.json"
    listed = gpt2("list-dump", "--source", "wiki", "--wiki", "enwiki", "--date", WIKI_DATE, "--mirror",
                  str(mirror), "--out", str(listing))
    assert listed.returncode == 0, listed.stderr
    name = json.loads(listing.read_text())["parts"][0]["file"]
    out = tmp_path / "fetched" / name
    return gpt2("fetch-part", "--listing", str(listing), "--file", name, "--out", str(out), *flags), out


def _no_sums(files: dict, listed: dict) -> None:
    for meta in listed.values():
        meta.pop("sha1"), meta.pop("md5")
    for sums in [n for n in files if n.endswith("sums.txt")]:
        files.pop(sums)


def _cut_first(files: dict, listed: dict) -> None:
    name = next(n for n in listed if "multistream1.xml" in n)
    files[name] = files[name][: len(files[name]) // 2]


@pytest.mark.reliability
def test_a_mirror_file_with_no_sums_is_refused_unless_allowed_and_its_size_is_checked(tmp_path):
    mirror, _ = _mirror(tmp_path, lambda files, listed: (_no_sums(files, listed), _cut_first(files, listed)))
    proc, out = _fetch_first(tmp_path, mirror)
    assert proc.returncode == 2 and "no sha1 or md5 is known for it" in _last_line(proc) and not out.exists()
    proc, out = _fetch_first(tmp_path, mirror, "--allow_unverified", "true")
    assert proc.returncode == 2 and "bytes, but the listing says" in _last_line(proc) and not out.exists()


@pytest.mark.reliability
def test_sums_missing_from_dumpstatus_come_from_the_published_sums_files(tmp_path):
    def drop_listed_sums(files, listed):
        for meta in listed.values():
            meta.pop("sha1"), meta.pop("md5")
        name = next(n for n in listed if "multistream1.xml" in n)
        files[name] = files[name][:-1] + b"!"  # same size, other bytes
    mirror, _ = _mirror(tmp_path, drop_listed_sums)
    proc, out = _fetch_first(tmp_path, mirror)
    assert proc.returncode == 2 and "sha1 mismatch" in _last_line(proc) and not out.exists()


@pytest.mark.reliability
def test_a_cut_download_with_no_content_length_is_resumed_to_the_listed_size(tmp_path):
    files = three_part_dump("enwiki", WIKI_DATE)
    name = next(n for n in files if "multistream1.xml" in n)
    for srv in serve({f"/enwiki/{WIKI_DATE}/{n}": data for n, data in files.items()}):
        srv.no_length, srv.cut_at, srv.cuts_left = True, len(files[name]) // 2, 1
        proc, out = _fetch_first(tmp_path, srv.base, "--retries", "2")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == files[name]
    assert [entry["range"] for entry in srv.log] == [None, f"bytes={len(files[name]) // 2}-"]


def test_a_mirror_file_others_can_write_is_copied_not_linked(tmp_path):
    mirror, files = _mirror(tmp_path)
    name = next(n for n in files if "multistream1.xml" in n)
    (mirror / "enwiki" / WIKI_DATE / name).chmod(0o666)
    proc, out = _fetch_first(tmp_path, mirror)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_ino != (mirror / "enwiki" / WIKI_DATE / name).stat().st_ino


@pytest.mark.reliability
def test_dump_path_inside_the_workflow_outputs_is_refused_and_kept(tmp_path, sample_dump):
    own = tmp_path / "resources/dumps/enwiki-sample.xml.bz2"
    own.parent.mkdir(parents=True)
    own.write_bytes(sample_dump.read_bytes())
    config = {"dump": {"source": "path", "path": "resources/dumps/enwiki-sample.xml.bz2",
                       "name": "enwiki-sample"}}
    proc = snakemake(tmp_path, "results/shards/manifest.json", config=config)
    assert proc.returncode != 0
    assert "error: config: dump.path resources/dumps/enwiki-sample.xml.bz2 is inside the workflow's own " \
           "outputs (resources/dumps/)" in proc.stderr
    assert own.read_bytes() == sample_dump.read_bytes()


@pytest.mark.reliability
def test_a_path_with_shell_characters_reaches_the_command_as_one_word(tmp_path, sample_dump):
    odd = tmp_path / "my dumps" / "$(touch PWNED); x.xml.bz2"
    odd.parent.mkdir()
    odd.write_bytes(sample_dump.read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, "resources/dumps/mine/mine.xml.bz2", config={"dump": {"source": "path", "path": str(odd),
                                                                         "name": "mine"}})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (work / "PWNED").exists() and (work / "resources/dumps/mine/mine.xml.bz2").read_bytes() == odd.read_bytes()


@pytest.fixture(scope="session")
def bz2_bomb(tmp_path_factory) -> Path:
    """A 1 kB bz2 dump whose one article is 1 GiB of wikitext."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.xml.bz2"
    pack = bz2.BZ2Compressor(9)
    head = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" xml:lang="en"><siteinfo><namespaces>'
            '<namespace key="0" /></namespaces></siteinfo><page><title>Big</title><ns>0</ns><id>1</id>'
            '<revision><id>1</id><text xml:space="preserve">').encode()
    block = b"a" * (1 << 20)
    data = [pack.compress(head), *(pack.compress(block) for _ in range(1024)),
            pack.compress(b"</text></revision></page></mediawiki>\n"), pack.flush()]
    path.write_bytes(b"".join(data))
    return path


def _peak_mib(cmd: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run `cmd` in a child; its (and its children's) peak resident memory in MiB."""
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(p.stderr); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}, timeout=600)
    return proc, float(proc.stdout.strip().splitlines()[-1])


@pytest.mark.reliability
def test_a_bz2_bomb_is_one_error_in_bounded_memory(tmp_path, bz2_bomb):
    assert bz2_bomb.stat().st_size < 2048
    out = tmp_path / "resources/dumps/bomb.xml.bz2"
    proc, peak = _peak_mib([sys.executable, "-m", "gpt2", "fetch-dump", "--source", "path", "--path",
                            str(bz2_bomb), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr  # an article, by its head: the corpus stage decides
    assert json.loads(info_path(out).read_text())["largest_page_bytes"] == 1 << 30 and peak < 1024
    work = tmp_path / "work"
    work.mkdir()
    config = work / "bomb.yaml"
    config.write_text(f"dump: {{source: path, path: {bz2_bomb}}}\n")
    proc, peak = _peak_mib([str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "Snakefile"),
                            "--cores", "2", "results/corpus/vocab.txt", "--configfile", str(config)], work)
    assert proc.returncode != 0 and peak < 1024, (peak, proc.stderr[-2000:])
    extracted = next((work / "results/logs/extract_chunk").glob("*/0.log")).read_text()
    assert "skipped 1 page(s) whose wikitext is over 16,777,216 bytes" in extracted
    gathered = (work / "results/logs/gather_bucket/0.log").read_text().strip().splitlines()[-1]
    assert gathered.startswith("error: the dump gave no article with a sentence between corpus.min_length")
    assert not (work / "results/corpus").exists()
