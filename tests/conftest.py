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
# Korean text written for the tests: short encyclopedic sentences about cities
# and nature, enough for kss to split and WordPiece to learn from.
KOREAN = [
    "서울은 대한민국의 수도이며 한강을 따라 넓게 펼쳐진 큰 도시이다. 많은 사람들이 매일 지하철을 타고 회사와 학교에 간다.",
    "부산은 남쪽 바다에 있는 항구 도시로 해운대 해수욕장이 유명하다. 여름에는 전국에서 온 관광객들이 바닷가를 가득 채운다.",
    "제주도는 화산 활동으로 만들어진 섬이며 한라산이 섬 가운데에 솟아 있다. 돌과 바람과 여자가 많아서 삼다도라고 불리기도 한다.",
    "한강은 강원도에서 시작하여 서울을 지나 서해로 흘러가는 긴 강이다. 강가에는 자전거 길과 공원이 잘 만들어져 있다.",
    "경주는 신라의 옛 수도로 불국사와 석굴암 같은 문화유산이 많이 남아 있다. 학생들은 수학여행으로 경주를 자주 방문한다.",
    "설악산은 가을 단풍이 아름다운 산으로 등산객들에게 사랑을 받는다. 정상에 오르면 동해 바다가 멀리 내려다보인다.",
    "김치는 배추와 고춧가루와 마늘로 만드는 한국의 대표적인 발효 음식이다. 겨울이 오기 전에 가족들이 모여 김장을 한다.",
    "한글은 세종대왕이 백성을 위해 만든 문자로 배우기 쉬운 것으로 알려져 있다. 자음과 모음을 모아서 한 글자를 이룬다.",
    "대구는 분지 지형 때문에 여름에 매우 덥고 겨울에는 꽤 춥다. 사과 농사가 예로부터 유명한 지역이기도 하다.",
    "인천에는 큰 국제공항이 있어서 외국으로 떠나는 여행객들이 많이 모인다. 차이나타운과 월미도도 많은 사람들이 찾는 곳이다.",
    "전주는 비빔밥과 한옥 마을로 잘 알려진 도시이다. 오래된 골목을 걸으면 전통 찻집과 작은 공방을 만날 수 있다.",
    "광주는 빛고을이라는 뜻의 이름을 가진 도시로 예술과 문화 행사가 많이 열린다. 시민들은 무등산을 자주 오른다.",
]

TINY_CONFIG = {"train": {"steps": 150, "batch_tokens": 4096, "micro_batch": 32, "lr": 0.003, "warmup_ratio": 0.1,
                         "eval_every": 50, "eval_tokens": 4096, "log_every": 10, "checkpoint_every": 50}}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The whole DAG up to results/eval_tiny.json, run once by Snakemake for the session."""
    work = tmp_path_factory.mktemp("tiny")
    proc = snakemake(work, "results/eval_tiny.json", config=TINY_CONFIG)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work
