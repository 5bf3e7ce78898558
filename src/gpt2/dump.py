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
from pathlib import Path

from urllib.parse import urljoin

import requests
import urllib3
from tqdm import tqdm

from gpt2 import UserError
from gpt2.files import atomic_path, file_digest, link_or_copy
from gpt2.params import DumpParams
from gpt2.wikixml import Export, ExportError

SAMPLE_RESOURCE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SAMPLE_NAME = "enwiki-sample"
SUPPORTED_LANGS = ("en", "ko")  # what expanda's wikipedia extension can split into sentences
CHUNK = 1 << 20


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

MAX_LISTING_BYTES = 16 << 20  # dumpstatus.json, the sums files, a folder listing: enwiki's are < 1 MB


class IncompleteDownload(Exception):
    """The server closed the connection before the announced or listed length."""


class DeadlinePassed(Exception):
    """dump.deadline_s ran out while a file was downloading."""


class Retry(Exception):
    """A transient failure (429, 5xx, a range answer that forces a restart): try again after `wait` seconds."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


def info_path(dump: Path) -> Path:
    """The JSON sidecar of `resources/dumps/<name>.xml.bz2`: `<name>.json`."""
    return dump.parent / (dump.name.removesuffix(".xml.bz2") + ".json")


def partial_path(dest: Path) -> Path:
    """Where a download accumulates; it survives failed runs so the next one resumes."""
    return dest.parent / ".partial" / (dest.name + ".part")


def _refuse_downgrade(resp: requests.Response, *args, **kwargs) -> None:
    """A response hook: a redirect from https to anything else is refused before it is followed."""
    if resp.is_redirect and resp.url.startswith("https://"):
        target = urljoin(resp.url, resp.headers.get("Location", ""))
        if not target.startswith("https://"):
            raise UserError(f"{resp.url} redirects to {target}: a redirect from https to an unencrypted address "
                            "is refused")


def session_for(url: str) -> requests.Session:
    """A requests session that refuses https -> http redirects; plain http gets a warning in the log."""
    if url.startswith("http://"):
        print(f"warning: {url} is plain http: nothing authenticates what it sends, only the checksums "
              "guard the files", file=sys.stderr)
    session = requests.Session()
    session.hooks["response"].append(_refuse_downgrade)
    return session


def read_capped(session: requests.Session, url: str, timeout: float, label: str) -> bytes | None:
    """The body of a small file (a listing, a sums file) at `url`, at most MAX_LISTING_BYTES; None for a 404."""
    try:
        with session.get(url, stream=True, timeout=timeout) as resp:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise UserError(f"{label}: {url} answered HTTP {resp.status_code} {resp.reason}")
            body = resp.raw.read(MAX_LISTING_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise UserError(f"{label}: cannot read {url} ({_reason(exc)})") from None
    if len(body) > MAX_LISTING_BYTES:
        raise UserError(f"{label}: {url} is over {MAX_LISTING_BYTES >> 20} MiB, too big for a listing; "
                        "is this the dumps site?")
    return body


def _reason(exc: Exception) -> str:
    """The cause of a requests error in a few words (its text nests several exceptions)."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text) or re.search(r"(certificate verify failed[^'\")]*)", text)
    return found[1].strip() if found else (type(exc).__name__ + (f": {text[:120]}" if text else ""))


def published_sums(read, filename: str) -> dict[str, str]:
    """{algorithm: hex} for `filename` from the <wiki>-<date>-{sha1,md5}sums.txt beside it; `read(name)`
    gives a file of that folder (None when missing). Only a line naming exactly `filename` counts."""
    match = re.match(r"^([a-z_]+)-(\d{8}|latest)-", filename)
    if not match:
        return {}
    sums = {}
    for algorithm, digits in (("sha1", 40), ("md5", 32)):
        body = read(f"{match[1]}-{match[2]}-{algorithm}sums.txt")
        for line in (body or b"").decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == filename and re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", parts[0]):
                sums[algorithm] = parts[0].lower()
    return sums


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total) of `bytes FIRST-LAST/TOTAL` or `bytes */TOTAL`; None where absent."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", header.strip())
    if not match:
        return None, None
    return (int(match[1]) if match[1] else None), (int(match[2]) if match[2] != "*" else None)


def _start_over(part: Path, why: str) -> Retry:
    print(f"{why}: starting {part.name} over", file=sys.stderr)
    part.unlink(missing_ok=True)
    return Retry(why, wait=0)


def _fetch_rest(session: requests.Session, url: str, part: Path, timeout: float, size: int | None,
                deadline: float) -> int:
    """Append the missing bytes of `url` to `part`; return how many were fetched. `size` is the listed size."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        raise _start_over(part, f"the partial file has {have:,} bytes, more than the listed {size:,}")
    if size is not None and have == size:
        return 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        status = resp.status_code
        if status == 416 and have:
            _, total = _content_range(resp.headers.get("Content-Range", ""))
            if total == have:
                return 0  # nothing left to fetch: the part is already whole
            raise _start_over(part, f"the server has nothing past byte {have:,} (its size: {total}), a stale part")
        if status == 429 or status >= 500:
            raise Retry(f"HTTP {status} {resp.reason}", wait=_retry_after(resp))
        if status not in (200, 206):
            raise UserError(f"{url}: HTTP {status} {resp.reason}")
        if status == 206 and _content_range(resp.headers.get("Content-Range", ""))[0] != have:
            raise _start_over(part, f"asked from byte {have:,}, the server sent {resp.headers.get('Content-Range')}")
        if status == 200:
            have = 0  # the server ignored the range request: start over, never append
        length = resp.headers.get("Content-Length")
        total = size if size is not None else have + int(length) if length and length.isdigit() else None
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
                if time.monotonic() > deadline:
                    raise DeadlinePassed(f"{have + fetched:,} bytes so far")
        if total is not None and have + fetched < total:
            raise IncompleteDownload(f"got {have + fetched:,} of {total:,} bytes")
        return fetched


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    return min(float(value), 300.0) if value.isdigit() else None


def download(url: str, dest: Path, params: DumpParams, size: int | None = None) -> Path:
    """Stream `url` into the partial file, resuming and retrying with backoff within dump.deadline_s."""
    part = partial_path(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + params.deadline_s
    transient = (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError, IncompleteDownload, Retry)
    with session_for(url) as session:
        for attempt in range(params.retries + 1):
            before = part.stat().st_size if part.exists() else 0
            try:
                fetched = _fetch_rest(session, url, part, params.timeout_s, size, deadline)
                print(f"fetched {fetched:,} bytes of {url} in attempt {attempt + 1}", file=sys.stderr)
                return part
            except DeadlinePassed as exc:
                raise UserError(f"{url}: not done within dump.deadline_s = {params.deadline_s:g} s ({exc}); "
                                "run again to resume") from None
            except transient as exc:
                got = part.stat().st_size if part.exists() else 0
                if attempt == 0 and got == before == 0 and isinstance(exc, requests.ConnectionError):
                    # DNS, refused, TLS: the address is wrong or unreachable, retrying will not help
                    raise UserError(f"cannot reach {url} ({_reason(exc)}); check the address and the network") \
                        from None
                wait = exc.wait if isinstance(exc, Retry) and exc.wait is not None else min(2.0 ** attempt, 60.0)
                if attempt == params.retries or time.monotonic() + wait > deadline:
                    raise UserError(f"{url}: download failed after {attempt + 1} attempts ({_reason(exc)}); "
                                    f"run again to resume from byte {got:,}") from None
                print(f"attempt {attempt + 1} failed ({_reason(exc)}); retrying in {wait:.0f}s", file=sys.stderr)
                time.sleep(wait)
    raise AssertionError("unreachable")


def verify(path: Path, label: str, expected: dict[str, str], size: int | None = None) -> None:
    """Compare the size and checksums; a mismatch names the file and both values."""
    if size is not None and path.stat().st_size != size:
        raise UserError(f"{label}: {path.stat().st_size:,} bytes, but the listing says {size:,}")
    for algorithm, want in expected.items():
        got = file_digest(path, algorithm)
        if got != want.lower():
            raise UserError(f"{label}: {algorithm} mismatch, expected {want} but the file has {got}")
        print(f"{label}: {algorithm} {got} verified", file=sys.stderr)


def download_verified(url: str, dest: Path, label: str, expected: dict[str, str], params: DumpParams,
                      size: int | None = None) -> Path:
    """The partial file of `dest`, downloaded and checked; a mismatch moves it aside so a rerun starts over."""
    part = download(url, dest, params, size)
    try:
        verify(part, label, expected, size)
    except UserError as exc:
        rejected = part.with_suffix(".rejected")
        os.replace(part, rejected)
        raise UserError(f"{exc}; the download was moved to {rejected}") from None
    return part


def require_sums(expected: dict[str, str], label: str, where: str, params: DumpParams) -> None:
    """No known sum: refused unless dump.allow_unverified says to accept a file on its size alone."""
    if expected:
        return
    if not params.allow_unverified:
        raise UserError(f"{label}: no sha1 or md5 is known for it ({where}); set dump.sha1 or dump.md5, or "
                        "dump.allow_unverified: true to accept it on its size alone")
    print(f"warning: {label}: no checksum known, accepted unverified (dump.allow_unverified)", file=sys.stderr)


# --- inspection ---------------------------------------------------------------


def inspect_dump(path: Path) -> dict:
    """Stream the dump once, in bounded memory: language, page and main-namespace article counts,
    and the largest page (pages over corpus.max_page_bytes are skipped by the corpus stage).

    Raises UserError for a file that is not bz2, is truncated, is not a
    MediaWiki export, holds no articles, or is in a language expanda lacks.
    """
    try:
        with bz2.open(path, "rb") as fh:
            info = _scan_export(fh)
    except EOFError:
        raise UserError(f"{path}: the bz2 stream ends early (truncated dump); download it again") from None
    except OSError as exc:
        raise UserError(f"{path}: not a readable bz2 file ({exc}); dumps must be *.xml.bz2") from None
    except ExportError as exc:
        raise UserError(f"{path}: {exc}; is this a MediaWiki export?") from None
    if info["articles"] == 0:
        raise UserError(f"{path}: no main-namespace articles among {info['pages']} pages; "
                        "use a pages-articles dump")
    check_language(info["lang"], path)
    return info


def check_language(lang: str, path: Path) -> None:
    """expanda splits sentences in English (Punkt) and Korean (kss) only."""
    if lang not in SUPPORTED_LANGS:
        raise UserError(f"{path}: language {lang!r} is not supported by expanda "
                        f"(supported: {', '.join(SUPPORTED_LANGS)})")


def _scan_export(fh) -> dict:
    export = Export(fh, max_text_bytes=0)  # only sizes and each page's head are needed
    pages = articles = largest = 0
    for page in export.pages():
        pages += 1
        largest = max(largest, page.size)
        if page.ns == "0" and page.size and not page.head.lower().startswith("#redirect"):
            articles += 1
    return {"lang": export.lang, "pages": pages, "articles": articles, "largest_page_bytes": largest}


# --- the rule's entry point ---------------------------------------------------


def fetch_dump(out: Path, params: DumpParams) -> dict:
    """Put the dump at `out` (+ `<out stem>.json` sidecar) only once it is verified."""
    out, source, url, path = Path(out), params.source, params.url, params.path
    expected = {k: v for k, v in (("sha1", params.sha1), ("md5", params.md5)) if v}
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
        if src.resolve() == out.resolve():
            raise UserError(f"dump.path {path} is the output itself: point it at your own copy outside "
                            "resources/dumps/ and results/")
        verify(src, str(src), expected)
        info = inspect_dump(src)
        _link_or_copy(src, out)
    elif source == "url":
        if not expected:
            with session_for(url) as session:
                base = url.rsplit("/", 1)[0]
                expected = published_sums(lambda name: read_capped(session, f"{base}/{name}", params.timeout_s,
                                                                    "dump.url"), url.rsplit("/", 1)[1])
            require_sums(expected, f"dump.url {url}", "no published sha1sums/md5sums beside it", params)
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


def _link_or_copy(src: Path, out: Path, check=None) -> None:
    """`src` at `out`; `check(tmp)` runs on what will be kept, before it takes the name `out`."""
    with atomic_path(out) as tmp:
        tmp.unlink()
        if _others_can_change(src):
            shutil.copyfile(src, tmp)  # a hard link would share the inode with whoever can write it
        else:
            link_or_copy(src, tmp)
        if check is not None:
            check(tmp)


def _others_can_change(path: Path) -> bool:
    """The file is writable by its group or others, or belongs to another user."""
    st = path.stat()
    return bool(st.st_mode & 0o022) or st.st_uid != os.getuid()


# --- whole wikis: dumpstatus.json, then one job per file ------------------------------

MULTISTREAM_JOB = "articlesmultistreamdump"


def file_patterns(wiki: str, date: str) -> tuple[re.Pattern, re.Pattern]:
    """Wikimedia's names of a dump's multistream data and index files, numbered or single, matched whole."""
    stem = re.escape(f"{wiki}-{date}-pages-articles-multistream")
    return (re.compile(rf"{stem}(\d*)\.xml(?:-p(\d+)p\d+)?\.bz2"),
            re.compile(rf"{stem}-index(\d*)\.txt(?:-p(\d+)p\d+)?\.bz2"))


def _is_url(mirror: str) -> bool:
    return re.match(r"^https?://", mirror) is not None


def mirror_reader(mirror: str, timeout: float):
    """`read(path)`: a file of the dumps site (HTTP(S) or a local folder), at most MAX_LISTING_BYTES; None if
    it is missing."""
    if _is_url(mirror):
        session = session_for(mirror)
        return lambda path: read_capped(session, f"{mirror.rstrip('/')}/{path}", timeout, "dump.mirror")

    def read_local(path: str) -> bytes | None:
        local = Path(mirror) / path
        if not local.is_file():
            return None
        if local.stat().st_size > MAX_LISTING_BYTES:
            raise UserError(f"dump.mirror {mirror}: {path} is over {MAX_LISTING_BYTES >> 20} MiB, too big for a "
                            "listing")
        return local.read_bytes()

    return read_local


def _dates(params: DumpParams, read) -> list[str]:
    """The dump dates the mirror lists for the wiki, newest first."""
    if _is_url(params.mirror):
        names = re.findall(r'href="(\d{8})/?"', (read(f"{params.wiki}/") or b"").decode("utf-8", "replace"))
    else:
        folder = Path(params.mirror) / params.wiki
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted({n for n in names if re.fullmatch(r"\d{8}", n)}, reverse=True)


def _multistream_job(params: DumpParams, date: str, read) -> dict | None:
    """The finished pages-articles-multistream job of one dump, or None."""
    body = read(f"{params.wiki}/{date}/dumpstatus.json")
    if body is None:
        raise UserError(f"dump.mirror {params.mirror}: no {params.wiki}/{date}/dumpstatus.json there; is it a "
                        "copy of the dumps site?")
    try:
        status = json.loads(body)
    except ValueError:
        raise UserError(f"dump.mirror {params.mirror}: {params.wiki}/{date}/dumpstatus.json is not JSON") from None
    job = status.get("jobs", {}).get(MULTISTREAM_JOB, {}) if isinstance(status, dict) else {}
    return job if isinstance(job, dict) and job.get("status") == "done" else None


def resolve_date(params: DumpParams, read) -> tuple[str, dict]:
    """dump.date, `latest` made the newest date whose multistream files are done, and that job."""
    dates = [params.date] if params.date != "latest" else _dates(params, read)
    for date in dates[:5]:  # an unfinished newest dump is normal; older ones are finished
        job = _multistream_job(params, date, read)
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


def _checked_entries(files: dict, params: DumpParams, date: str) -> dict[str, dict]:
    """Every listed file, its name matched whole against Wikimedia's pattern and its size and sums well-formed."""
    where = f"{params.mirror}/{params.wiki}/{date}/dumpstatus.json"
    patterns = file_patterns(params.wiki, date)
    if not isinstance(files, dict):
        raise UserError(f"{where}: {MULTISTREAM_JOB}.files is not a mapping of file names")
    entries = {}
    for name, meta in files.items():
        if not any(p.fullmatch(name) for p in patterns):
            raise UserError(f"{where} lists {name!r}, which is not a {params.wiki}-{date} pages-articles-"
                            "multistream file name: this mirror's listing is refused")
        meta = meta if isinstance(meta, dict) else {}
        size, sha1, md5 = meta.get("size"), meta.get("sha1") or "", meta.get("md5") or ""
        if not (size is None or (isinstance(size, int) and size >= 0)) or \
                not re.fullmatch(r"([0-9a-f]{40})?", str(sha1)) or not re.fullmatch(r"([0-9a-f]{32})?", str(md5)):
            raise UserError(f"{where}: the size or sums of {name} are malformed ({meta}): this mirror's listing is "
                            "refused")
        entries[name] = {"size": size, "sha1": sha1 or None, "md5": md5 or None}
    return entries


def list_dump(out: Path, params: DumpParams) -> dict:
    """Write the dump's file list: data files of dump.parts in page order, their index files, sizes, sums."""
    read = mirror_reader(params.mirror, params.timeout_s)
    date, job = resolve_date(params, read)
    files = _checked_entries(job.get("files", {}), params, date)
    data, index_file = file_patterns(params.wiki, date)
    # A data file and its index share the part number and page range in their names.
    index = {_key(m): name for name in files if (m := index_file.fullmatch(name))}
    parts = [{"file": name, "part": _key(m)[0], "first_page": _key(m)[1], "index": index.get(_key(m), "")}
             for name in files if (m := data.fullmatch(name))]
    if not parts:
        raise UserError(f"{params.wiki} {date}: dumpstatus.json lists no pages-articles-multistream files")
    chosen = _select_parts(params.parts, {p["part"] for p in parts})
    parts = sorted((p for p in parts if p["part"] in chosen), key=lambda p: (p["part"], p["first_page"]))
    keep = {p["file"] for p in parts} | {p["index"] for p in parts if p["index"]}
    listing = {"wiki": params.wiki, "date": date, "mirror": params.mirror, "parts": parts,
               "files": {name: files[name] for name in sorted(keep)}}
    with atomic_path(Path(out)) as tmp:
        tmp.write_text(json.dumps(listing, indent=2) + "\n")
    size = sum(listing["files"][p["file"]]["size"] or 0 for p in parts)
    print(f"{params.wiki} {date}: {len(parts)} files of parts {params.parts} ({size / 1e9:.2f} GB of bz2)",
          file=sys.stderr)
    return listing


def fetch_part(listing: Path, file: str, out: Path, params: DumpParams) -> None:
    """Fetch one file of the listing to `out`, resumable; accept it only at its listed size and sums."""
    meta = json.loads(Path(listing).read_text())
    if file not in meta["files"] or not any(p.fullmatch(file) for p in file_patterns(meta["wiki"], meta["date"])):
        raise UserError(f"{file} is not a file of {listing}; delete the listing to list the dump again")
    entry, folder = meta["files"][file], f"{meta['wiki']}/{meta['date']}"
    expected = {k: entry[k] for k in ("sha1", "md5") if entry.get(k)}
    if not expected:
        read = mirror_reader(meta["mirror"], params.timeout_s)
        expected = published_sums(lambda name: read(f"{folder}/{name}"), file)
    require_sums(expected, file, f"none in dumpstatus.json or the sums files of {meta['mirror']}/{folder}", params)
    source = f"{meta['mirror'].rstrip('/')}/{folder}/{file}"
    if not _is_url(meta["mirror"]):
        if not Path(source).is_file():
            raise UserError(f"dump.mirror {meta['mirror']}: no {folder}/{file} there")
        _link_or_copy(Path(source), Path(out), check=lambda tmp: verify(tmp, file, expected, entry["size"]))
        return
    os.replace(download_verified(source, Path(out), file, expected, params, entry["size"]), out)
