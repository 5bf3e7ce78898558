"""Shared fixtures: real Snakemake runs in a temp folder, and small MediaWiki dumps."""

from __future__ import annotations

import bz2
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake(workdir: Path, *targets: str, config: dict | None = None, extra: tuple[str, ...] = (),
              timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the project's Snakefile in `workdir` (outputs land there), config merged over the defaults."""
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           *extra, *targets]
    if config:
        cfg = workdir / "test-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(cfg)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                          env={**os.environ, **(env or {})})


def gpt2(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m gpt2 ...` as a user (or a rule) runs it."""
    return subprocess.run([sys.executable, "-m", "gpt2", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))


def write_dump(path: Path, pages: list[tuple], lang: str = "en", namespaces: dict[int, str] | None = None) -> Path:
    """A bz2 MediaWiki export (schema 0.10) with (namespace, title, wikitext[, redirect target]) pages."""
    body = "".join(
        f"<page><title>{escape(title)}</title><ns>{ns}</ns><id>{i}</id>"
        + (f'<redirect title="{escape(target[0], {chr(34): "&quot;"})}" />' if target else "")
        + f"<revision><id>{i}</id><text xml:space=\"preserve\">{escape(text)}</text></revision></page>\n"
        for i, (ns, title, text, *target) in enumerate(pages, 1)
    )
    names = "".join(f'<namespace key="{key}" case="first-letter">{escape(name)}</namespace>'
                    for key, name in (namespaces or {14: "Category"}).items())
    xml = (f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="{lang}">\n'
           '<siteinfo><sitename>Test</sitename><namespaces><namespace key="0" case="first-letter" />'
           f"{names}</namespaces></siteinfo>\n{body}</mediawiki>\n")
    path.write_bytes(bz2.compress(xml.encode("utf-8")))
    return path


class DumpServer(http.server.ThreadingHTTPServer):
    """Serves `files` on 127.0.0.1 with Range support, and misbehaves on request: it can cut the first
    N responses short, answer first with given statuses, ignore Range, answer a Range from byte 0,
    or leave out Content-Length."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files = files
        self.cut_at: int | None = None  # drop the connection after this many body bytes
        self.cuts_left = 0
        self.statuses: list[int] = []  # answer the next dump requests with these (e.g. 503) first
        self.ignore_range = False  # answer 200 and the whole file to a Range request
        self.range_from_zero = False  # answer a Range request with 206 and the bytes from 0
        self.no_length = False  # no Content-Length: the client cannot tell a cut from the end
        self.log: list[dict] = []  # one entry per dump request: range asked, bytes sent

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        dump = self.path.endswith(".bz2")
        if dump and srv.statuses:
            self.send_error(srv.statuses.pop(0))
            srv.log.append({"range": self.headers.get("Range"), "sent": 0})
            return
        start = 0
        header = self.headers.get("Range")
        if header and not srv.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            start = 0 if srv.range_from_zero else start
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if not srv.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cuts_left and dump:
            srv.cuts_left -= 1
            body = body[: srv.cut_at]
        if srv.no_length or (dump and srv.cut_at is not None):
            self.close_connection = True
        self.wfile.write(body)
        if dump:
            srv.log.append({"range": header, "sent": len(body)})


def serve(files: dict[str, bytes]):
    """A DumpServer on a thread for the length of a fixture (yield from it)."""
    srv = DumpServer(files)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="session")
def sample_dump() -> Path:
    from gpt2.dump import sample_path

    return sample_path()


# A tiny model with a budget that trains in about half a minute on 2 cores.
TINY_CONFIG = {"train": {"steps": 150, "batch_tokens": 4096, "micro_batch": 32, "lr": 0.003, "warmup_steps": 15,
                         "eval_every": 50, "eval_tokens": 4096, "log_every": 10, "checkpoint_every": 50}}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The whole DAG up to results/eval_tiny.json, run once by Snakemake for the session."""
    work = tmp_path_factory.mktemp("tiny")
    proc = snakemake(work, "results/eval_tiny.json", config=TINY_CONFIG)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work
