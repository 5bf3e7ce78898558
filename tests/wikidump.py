"""Fake Wikimedia dump folders made from the bundled sample, laid out as dumps.wikimedia.org.

Each part is a real multistream file: a header stream (<mediawiki> + <siteinfo>), streams of
`per_stream` pages, a closing stream, and its index (`offset:page id:title` lines, bz2).
`replicate` makes bigger dumps from the sample's pages under new ids and titles.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import re
from pathlib import Path


def split_export(xml: str) -> tuple[str, list[str], str]:
    """(header up to the first <page>, the <page> elements, the closing tag) of a MediaWiki export."""
    first, end = xml.index("<page>"), xml.rindex("</mediawiki>")
    pages = re.findall(r"<page>.*?</page>\s*", xml[first:end], flags=re.S)
    return xml[:first], [p.rstrip() + "\n  " for p in pages], xml[end:]


def sample_export() -> tuple[str, list[str], str]:
    from gpt2.dump import sample_path

    return split_export(bz2.open(sample_path(), "rt", encoding="utf-8").read())


def sample_parts() -> tuple[str, list[list[str]], str]:
    """The sample's 206 pages as three parts (header, parts, footer)."""
    header, pages, footer = sample_export()
    return header, [pages[:70], pages[70:140], pages[140:]], footer


def three_part_dump(wiki: str, date: str) -> dict[str, bytes]:
    """The dump folder of the sample as a three-part wiki."""
    header, parts, footer = sample_parts()
    return dump_files(wiki, date, parts, header, footer)


def page_id(page: str) -> int:
    return int(re.search(r"<id>(\d+)</id>", page)[1])


def replicate(pages: list[str], times: int) -> list[str]:
    """`times` copies of the pages; copy k > 0 has page ids + k x 10^7 and titles ending in ' (k)'."""
    out = list(pages)
    for k in range(1, times):
        for page in pages:
            page = re.sub(r"<id>(\d+)</id>", lambda m, k=k: f"<id>{int(m[1]) + k * 10**7}</id>", page, count=1)
            out.append(re.sub(r"<title>(.*?)</title>", rf"<title>\1 ({k})</title>", page, count=1))
    return out


def multistream(header: str, pages: list[str], footer: str, per_stream: int) -> tuple[bytes, bytes]:
    """(data, index) of one multistream file holding `pages`."""
    streams, index = [bz2.compress(header.encode())], []
    offset = len(streams[0])
    for start in range(0, len(pages), per_stream):
        group = pages[start:start + per_stream]
        for page in group:
            title = re.search(r"<title>(.*?)</title>", page)[1]
            index.append(f"{offset}:{page_id(page)}:{title}\n")
        streams.append(bz2.compress("".join(group).encode()))
        offset += len(streams[-1])
    streams.append(bz2.compress(footer.encode()))
    return b"".join(streams), bz2.compress("".join(index).encode())


def dump_files(wiki: str, date: str, parts: list[list[str]], header: str, footer: str,
               per_stream: int = 10) -> dict[str, bytes]:
    """name -> bytes of a dump folder: the parts (numbered when more than one), indexes, sums, dumpstatus.json."""
    files: dict[str, bytes] = {}
    for number, pages in enumerate(parts, 1):
        tag = str(number) if len(parts) > 1 else ""
        pages_tag = f"-p{page_id(pages[0])}p{page_id(pages[-1])}" if len(parts) > 1 else ""
        data, index = multistream(header, pages, footer, per_stream)
        files[f"{wiki}-{date}-pages-articles-multistream{tag}.xml{pages_tag}.bz2"] = data
        files[f"{wiki}-{date}-pages-articles-multistream-index{tag}.txt{pages_tag}.bz2"] = index
    listing = {name: {"size": len(data), "url": f"/{wiki}/{date}/{name}", "md5": hashlib.md5(data).hexdigest(),
                      "sha1": hashlib.sha1(data).hexdigest()} for name, data in files.items()}
    status = {"jobs": {"articlesmultistreamdump": {"status": "done", "updated": f"{date} 00:00:00",
                                                   "files": listing},
                       "xmlstubsdump": {"status": "done", "files": {}}}, "version": "0.8"}
    files["dumpstatus.json"] = json.dumps(status, indent=1).encode()
    files[f"{wiki}-{date}-sha1sums.txt"] = "".join(f"{m['sha1']}  {n}\n" for n, m in listing.items()).encode()
    return files


def write_mirror(root: Path, wiki: str, date: str, files: dict[str, bytes]) -> Path:
    """The dump folder as a local mirror: root/<wiki>/<date>/<file>."""
    folder = root / wiki / date
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return root
