"""Stage 1: the dump as a listing of files in resources/dumps/<name>/, each fetched and verified.

`list_dump` writes the listing every later stage plans from. Three sources are
one file: the real (shortened) enwiki sample shipped in the gensim wheel, an
HTTP(S) download (download.py: range resume, retries, size and checksum
verification), or a file the user already has; `fetch_part` fetches it with
`fetch_dump`, which inspects it once (bz2, MediaWiki XML, language,
main-namespace articles). A whole wiki (source wiki) is listed from the
dumpstatus.json Wikimedia publishes for it, names matched whole, and fetched
one file per job; the extraction jobs (corpus.py) check what they read, so
nothing decompresses the whole dump just to inspect it.
"""

from __future__ import annotations

import bz2
import importlib.resources
import json
import os
import re
import shutil
import sys
from pathlib import Path

from gpt2 import UserError
from gpt2.download import (MAX_LISTING_BYTES, download_verified, published_sums, read_capped, require_sums,
                           session_for, verify)
from gpt2.files import atomic_path, file_digest, link_or_copy
from gpt2.params import DumpParams
from gpt2.wikixml import Export, ExportError

SAMPLE_RESOURCE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SAMPLE_NAME = "enwiki-sample"
SUPPORTED_LANGS = ("en", "ko")  # what expanda's wikipedia extension can split into sentences


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


def info_path(dump: Path) -> Path:
    """The JSON sidecar of `resources/dumps/<name>.xml.bz2`: `<name>.json`."""
    return dump.parent / (dump.name.removesuffix(".xml.bz2") + ".json")


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
        if page.ns == "0" and page.size and not (page.redirect or page.head.lower().startswith("#redirect")):
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
    """Write the dump's file list, what every later stage plans from: a whole wiki's files (`_list_wiki`),
    or the one file of the sample, a URL or a path."""
    listing = _list_wiki(params) if params.source == "wiki" else _list_one_file(params)
    with atomic_path(Path(out)) as tmp:
        tmp.write_text(json.dumps(listing, indent=2) + "\n")
    size = sum(listing["files"][p["file"]]["size"] or 0 for p in listing["parts"])
    print(f"{listing['name']}: {len(listing['parts'])} file(s) ({size / 1e9:.2f} GB of bz2 listed)", file=sys.stderr)
    return listing


def _list_one_file(params: DumpParams) -> dict:
    """A one-file listing: `<name>.xml.bz2`, fetched by fetch_dump's rules for the source."""
    name = dump_name(params)
    file = f"{name}.xml.bz2"
    return {"source": params.source, "name": name, "wiki": "", "date": "", "mirror": "",
            "parts": [{"file": file, "part": 1, "first_page": 0, "index": ""}],
            "files": {file: {"size": None, "sha1": params.sha1 or None, "md5": params.md5 or None}}}


def _list_wiki(params: DumpParams) -> dict:
    """Data files of dump.parts in page order, their index files, sizes and sums, from dumpstatus.json."""
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
    return {"source": "wiki", "name": f"{params.wiki}-{date}", "wiki": params.wiki, "date": date,
            "mirror": params.mirror, "parts": parts, "files": {name: files[name] for name in sorted(keep)}}


def fetch_part(listing: Path, file: str, out: Path, params: DumpParams) -> None:
    """Fetch one file of the listing to `out`, resumable; accept it only at its listed size and sums."""
    meta = json.loads(Path(listing).read_text())
    if file not in meta["files"]:
        raise UserError(f"{file} is not a file of {listing}; delete the listing to list the dump again")
    if meta["source"] != "wiki":
        fetch_dump(Path(out), params)
        return
    if not any(p.fullmatch(file) for p in file_patterns(meta["wiki"], meta["date"])):
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
