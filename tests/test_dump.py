"""Stage 1: the dump -- sample, real HTTP download from a loopback server, local path, inspection."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from conftest import gpt2, write_dump
from gpt2 import UserError
from gpt2.dump import dump_name, info_path, inspect_dump, partial_path
from gpt2.params import DumpParams

DUMP_FILE = "enwiki-20240801-pages-articles-multistream1.xml-p1p41242.bz2"


class DumpServer(http.server.ThreadingHTTPServer):
    """Serves `files` on 127.0.0.1 with Range support; can cut the first N responses short."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files = files
        self.cut_at: int | None = None  # drop the connection after this many body bytes
        self.cuts_left = 0
        self.log: list[dict] = []  # one entry per dump request: range asked, bytes sent

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        if header:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cuts_left and self.path.endswith(".bz2"):
            self.server.cuts_left -= 1
            body = body[: self.server.cut_at]
            self.close_connection = True
        self.wfile.write(body)
        if self.path.endswith(".bz2"):
            self.server.log.append({"range": header, "sent": len(body)})


@pytest.fixture
def server(sample_dump):
    data = sample_dump.read_bytes()
    sums = f"{hashlib.sha1(data).hexdigest()}  {DUMP_FILE}\n{'0' * 40}  enwiki-20240801-other.xml.bz2\n"
    srv = DumpServer({f"/enwiki/20240801/{DUMP_FILE}": data,
                      "/enwiki/20240801/enwiki-20240801-sha1sums.txt": sums.encode()})
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


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
