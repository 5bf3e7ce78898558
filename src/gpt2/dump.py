"""Stage 1: get a Wikipedia dump into resources/dumps/, verified.

Three single-file sources: the real (shortened) enwiki sample shipped in the
gensim wheel, an HTTP(S) download with range resume, retries and checksum
verification, or a file the user already has. Such a dump is inspected once
(bz2, MediaWiki XML, language, main-namespace articles) and described in a
JSON sidecar that later stages read instead of parsing the dump again.

A whole wiki (source wiki) is listed from the dumpstatus.json Wikimedia
publishes for it (`list_dump`), then fetched one file per job (`fetch_part`);
its extraction jobs (corpus.py) check what they read, so nothing decompresses
the whole dump just to inspect it.
"""

from __future__ import annotations

import bz2
import importlib.resources
import json
import os
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from gpt2 import UserError
from gpt2.files import atomic_path, file_digest, link_or_copy
from gpt2.params import DumpParams

SAMPLE_RESOURCE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SAMPLE_NAME = "enwiki-sample"
SUPPORTED_LANGS = ("en", "ko")  # what expanda's wikipedia extension can split into sentences
CHUNK = 1 << 20
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def sample_path() -> Path:
    """The enwiki sample inside the installed gensim wheel (never copied into git)."""
    path = importlib.resources.files("gensim") / SAMPLE_RESOURCE
    if not path.is_file():
        raise UserError(f"the bundled sample {SAMPLE_RESOURCE} is missing from gensim: run `make setup`")
    return Path(str(path))


def dump_name(params: DumpParams) -> str:
    """Name under resources/dumps/: dump.name, else derived from the URL or file name."""
    if params.name:
        return params.name
    if params.source == "sample":
        return SAMPLE_NAME
    if params.source == "wiki":
        return f"{params.wiki}-{params.date}"
    base = os.path.basename(params.url if params.source == "url" else params.path)
    stem = re.sub(r"(\.xml)?\.bz2$", "", base)
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "dump"


# --- download ---------------------------------------------------------------


class IncompleteDownload(Exception):
    """The server closed the connection before the announced length."""


def info_path(dump: Path) -> Path:
    """The JSON sidecar of `resources/dumps/<name>.xml.bz2`: `<name>.json`."""
    return dump.parent / (dump.name.removesuffix(".xml.bz2") + ".json")


def partial_path(dest: Path) -> Path:
    """Where a download accumulates; it survives failed runs so the next one resumes."""
    return dest.parent / ".partial" / (dest.name + ".part")


def published_checksum(url: str, session: requests.Session, timeout: float) -> tuple[str, str] | None:
    """(algorithm, hex) from Wikimedia's <wiki>-<date>-{sha1,md5}sums.txt beside `url`."""
    base, filename = url.rsplit("/", 1)
    match = re.match(r"^([a-z_]+)-(\d{8}|latest)-", filename)
    if not match:
        return None
    for algorithm in ("sha1", "md5"):
        sums_url = f"{base}/{match[1]}-{match[2]}-{algorithm}sums.txt"
        try:
            resp = session.get(sums_url, timeout=timeout)
        except requests.RequestException:
            continue
        if resp.status_code != 200:
            continue
        for line in resp.text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == filename:
                return algorithm, parts[0].lower()
    return None


def _fetch_rest(session: requests.Session, url: str, part: Path, timeout: float) -> int:
    """Append the missing bytes of `url` to `part`; return how many were fetched."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and have:
            return 0  # nothing left to fetch: the part is already whole
        if resp.status_code not in (200, 206):
            raise UserError(f"dump.url {url}: HTTP {resp.status_code} {resp.reason}")
        if resp.status_code == 200:
            have = 0  # the server ignored the range request: start over
        total = have + int(resp.headers.get("Content-Length", 0)) or None
        if have:
            print(f"resuming {part.name} at byte {have:,}", file=sys.stderr)
        fetched = 0
        with open(part, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name, mininterval=2
        ) as bar:
            # read1 hands over whatever arrived, so a cut connection loses no
            # received bytes (iter_content drops a partly read chunk).
            for block in iter(lambda: resp.raw.read1(CHUNK), b""):
                out.write(block)
                fetched += len(block)
                bar.update(len(block))
        if total is not None and have + fetched < total:
            raise IncompleteDownload(f"got {have + fetched:,} of {total:,} bytes")
        return fetched


def download(url: str, dest: Path, retries: int, timeout: float) -> Path:
    """Stream `url` into the partial file, resuming and retrying with backoff."""
    part = partial_path(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    transient = (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError, IncompleteDownload)
    with requests.Session() as session:
        for attempt in range(retries + 1):
            try:
                fetched = _fetch_rest(session, url, part, timeout)
                print(f"fetched {fetched:,} bytes of {url} in attempt {attempt + 1}", file=sys.stderr)
                return part
            except transient as exc:
                if attempt == retries:
                    raise UserError(f"dump.url {url}: download failed after {retries + 1} attempts ({exc}); "
                                    f"run again to resume from byte {part.stat().st_size:,}") from exc
                wait = min(2.0 ** attempt, 60.0)
                print(f"attempt {attempt + 1} failed ({exc}); retrying in {wait:.0f}s", file=sys.stderr)
                time.sleep(wait)
    raise AssertionError("unreachable")


def verify(path: Path, label: str, expected: dict[str, str]) -> None:
    """Compare checksums; a mismatch names the file and both sums."""
    for algorithm, want in expected.items():
        got = file_digest(path, algorithm)
        if got != want.lower():
            raise UserError(f"{label}: {algorithm} mismatch, expected {want} but the file has {got}")
        print(f"{label}: {algorithm} {got} verified", file=sys.stderr)


def download_verified(url: str, dest: Path, label: str, expected: dict[str, str], params: DumpParams) -> Path:
    """The partial file of `dest`, downloaded and checked; a mismatch moves it aside so a rerun starts over."""
    part = download(url, dest, params.retries, params.timeout_s)
    try:
        verify(part, label, expected)
    except UserError as exc:
        rejected = part.with_suffix(".rejected")
        os.replace(part, rejected)
        raise UserError(f"{exc}; the download was moved to {rejected}") from None
    return part


# --- inspection ---------------------------------------------------------------


def inspect_dump(path: Path) -> dict:
    """Stream the dump once: language, page and main-namespace article counts.

    Raises UserError for a file that is not bz2, is truncated, is not a
    MediaWiki export, holds no articles, or is in a language expanda lacks.
    """
    try:
        with bz2.open(path, "rb") as fh:
            info = _scan_export(fh, path)
    except EOFError:
        raise UserError(f"{path}: the bz2 stream ends early (truncated dump); download it again") from None
    except OSError as exc:
        raise UserError(f"{path}: not a readable bz2 file ({exc}); dumps must be *.xml.bz2") from None
    except ET.ParseError as exc:
        raise UserError(f"{path}: not well-formed XML ({exc}); is this a MediaWiki export?") from None
    if info["articles"] == 0:
        raise UserError(f"{path}: no main-namespace articles among {info['pages']} pages; "
                        "use a pages-articles dump")
    if info["lang"] not in SUPPORTED_LANGS:
        raise UserError(f"{path}: language {info['lang']!r} is not supported by expanda "
                        f"(supported: {', '.join(SUPPORTED_LANGS)})")
    return info


def _scan_export(fh, path: Path) -> dict:
    events = ET.iterparse(fh, events=("start", "end"))
    _, root = next(events)
    if root.tag.rsplit("}", 1)[-1] != "mediawiki":
        raise UserError(f"{path}: root element is <{root.tag}>, not a MediaWiki export <mediawiki>")
    prefix = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    lang = root.get(XML_LANG, "")  # read now: clearing the root below drops its attributes
    pages = articles = 0
    for event, elem in events:
        if event != "end" or elem.tag != f"{prefix}page":
            continue
        pages += 1
        text = elem.findtext(f"{prefix}revision/{prefix}text") or ""
        if elem.findtext(f"{prefix}ns") == "0" and text and not text.lower().startswith("#redirect"):
            articles += 1
        root.clear()
    return {"lang": lang, "pages": pages, "articles": articles}


# --- the rule's entry point ---------------------------------------------------


def fetch_dump(out: Path, params: DumpParams) -> dict:
    """Put the dump at `out` (+ `<out stem>.json` sidecar) only once it is verified."""
    out, source, url, path = Path(out), params.source, params.url, params.path
    expected = {k: v for k, v in (("sha1", params.sha1), ("md5", params.md5)) if v} if params.verify else {}
    if source == "sample":
        src = sample_path()
        verify(src, str(src), expected)
        info = inspect_dump(src)
        with atomic_path(out) as tmp:
            shutil.copyfile(src, tmp)
    elif source == "path":
        src = Path(path)
        if not path or not src.is_file():
            raise UserError(f"dump.path {path!r} is not a file: set dump.path to your .xml.bz2")
        verify(src, str(src), expected)
        info = inspect_dump(src)
        _link_or_copy(src, out)
    elif source == "url":
        if params.verify and not expected:
            with requests.Session() as session:
                found = published_checksum(url, session, params.timeout_s)
            if found is None:
                raise UserError(f"dump.url {url}: no published sha1sums/md5sums found beside it; "
                                "set dump.sha1 or dump.md5 (or dump.verify: false)")
            expected = dict([found])
        part = download_verified(url, out, str(out), expected, params)
        info = inspect_dump(part)
        os.replace(part, out)
    else:
        raise UserError(f"dump.source {source!r} is not one of sample, url, path (wiki: list-dump, fetch-part)")
    info.update(source=source, file=str(out), sha1=expected.get("sha1") or file_digest(out, "sha1"))
    with atomic_path(info_path(out)) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    print(f"{out}: {info['articles']} articles in {info['pages']} pages, lang {info['lang']}", file=sys.stderr)
    return info


def _link_or_copy(src: Path, out: Path) -> None:
    with atomic_path(out) as tmp:
        tmp.unlink()
        link_or_copy(src, tmp)


# --- whole wikis: dumpstatus.json, then one job per file ------------------------------

DATA_FILE = re.compile(r"-pages-articles-multistream(\d*)\.xml(?:-p(\d+)p\d+)?\.bz2$")
INDEX_FILE = re.compile(r"-pages-articles-multistream-index(\d*)\.txt(?:-p(\d+)p\d+)?\.bz2$")
MULTISTREAM_JOB = "articlesmultistreamdump"


def _is_url(mirror: str) -> bool:
    return re.match(r"^https?://", mirror) is not None


def _read(params: DumpParams, path: str) -> bytes:
    """A file of the dumps site: over HTTP(S), or from a local mirror folder."""
    if _is_url(params.mirror):
        url = f"{params.mirror.rstrip('/')}/{path}"
        try:
            resp = requests.get(url, timeout=params.timeout_s)
        except requests.RequestException as exc:
            raise UserError(f"dump.mirror: cannot read {url} ({exc})") from None
        if resp.status_code != 200:
            raise UserError(f"dump.mirror: {url} answered HTTP {resp.status_code} {resp.reason}")
        return resp.content
    local = Path(params.mirror) / path
    if not local.is_file():
        raise UserError(f"dump.mirror {params.mirror}: no {path} there; is it a copy of the dumps site?")
    return local.read_bytes()


def _dates(params: DumpParams) -> list[str]:
    """The dump dates the mirror lists for the wiki, newest first."""
    if _is_url(params.mirror):
        names = re.findall(r'href="(\d{8})/?"', _read(params, f"{params.wiki}/").decode("utf-8", "replace"))
    else:
        folder = Path(params.mirror) / params.wiki
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted({n for n in names if re.fullmatch(r"\d{8}", n)}, reverse=True)


def _multistream_job(params: DumpParams, date: str) -> dict | None:
    """The finished pages-articles-multistream job of one dump, or None."""
    status = json.loads(_read(params, f"{params.wiki}/{date}/dumpstatus.json"))
    job = status.get("jobs", {}).get(MULTISTREAM_JOB, {})
    return job if job.get("status") == "done" else None


def resolve_date(params: DumpParams) -> tuple[str, dict]:
    """dump.date, `latest` made the newest date whose multistream files are done, and that job."""
    dates = [params.date] if params.date != "latest" else _dates(params)
    for date in dates[:5]:  # an unfinished newest dump is normal; older ones are finished
        job = _multistream_job(params, date)
        if job is not None:
            return date, job
    tried = ", ".join(dates[:5]) or f"none listed under {params.mirror}/{params.wiki}/"
    raise UserError(f"dump.wiki {params.wiki}: no finished {MULTISTREAM_JOB} in dumpstatus.json of {tried}; "
                    "set dump.date to a finished dump")


def _key(match: re.Match) -> tuple[int, int]:
    """(part, first page id) from a file name; a single-file dump is part 1."""
    return int(match[1] or 1), int(match[2] or 0)


def _select_parts(spec: str, available: set[int]) -> set[int]:
    if spec == "all":
        return available
    wanted: set[int] = set()
    for item in spec.split(","):
        first, _, last = item.partition("-")
        wanted.update(range(int(first), int(last or first) + 1))
    if not wanted <= available:
        raise UserError(f"dump.parts {spec}: the dump has no part {min(wanted - available)} "
                        f"(it has {min(available)}-{max(available)})")
    return wanted


def list_dump(out: Path, params: DumpParams) -> dict:
    """Write the dump's file list: data files of dump.parts in page order, their index files, sizes, sums."""
    date, job = resolve_date(params)
    files = job.get("files", {})
    # A data file and its index share the part number and page range in their names.
    index = {_key(m): name for name in files if (m := INDEX_FILE.search(name))}
    parts = [{"file": name, "part": _key(m)[0], "first_page": _key(m)[1], "index": index.get(_key(m), "")}
             for name in files if (m := DATA_FILE.search(name))]
    if not parts:
        raise UserError(f"{params.wiki} {date}: dumpstatus.json lists no pages-articles-multistream files")
    chosen = _select_parts(params.parts, {p["part"] for p in parts})
    parts = sorted((p for p in parts if p["part"] in chosen), key=lambda p: (p["part"], p["first_page"]))
    keep = {p["file"] for p in parts} | {p["index"] for p in parts if p["index"]}
    listing = {"wiki": params.wiki, "date": date, "mirror": params.mirror, "parts": parts,
               "files": {name: {k: files[name].get(k) for k in ("size", "sha1", "md5")} for name in sorted(keep)}}
    with atomic_path(Path(out)) as tmp:
        tmp.write_text(json.dumps(listing, indent=2) + "\n")
    size = sum(listing["files"][p["file"]]["size"] or 0 for p in parts)
    print(f"{params.wiki} {date}: {len(parts)} files of parts {params.parts} ({size / 1e9:.2f} GB of bz2)",
          file=sys.stderr)
    return listing


def fetch_part(listing: Path, file: str, out: Path, params: DumpParams) -> None:
    """Fetch one file of the listing to `out`, resumable, and check its published sha1 (and md5)."""
    meta = json.loads(Path(listing).read_text())
    if file not in meta["files"]:
        raise UserError(f"{file} is not in {listing}; delete it to list the dump again")
    sums = meta["files"][file]
    expected = {k: sums[k] for k in ("sha1", "md5") if sums.get(k)} if params.verify else {}
    source = f"{meta['mirror'].rstrip('/')}/{meta['wiki']}/{meta['date']}/{file}"
    if not _is_url(meta["mirror"]):
        verify(Path(source), file, expected)
        _link_or_copy(Path(source), Path(out))
        return
    os.replace(download_verified(source, Path(out), file, expected, params), out)
