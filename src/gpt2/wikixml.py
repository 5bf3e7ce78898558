"""A MediaWiki XML export read as a stream, in bounded memory.

ElementTree's iterparse holds each element's whole text until its end tag, so one
hostile page (1 GB of text, ~1 kB of bz2) takes 1 GB of memory. This reader feeds
expat 1 MiB at a time and keeps a page's text only while it stays under a cap;
a bigger page comes out with `text=None` and its size, its text never held.
Used by the dump inspection and by the patched expanda's extraction (patches/0008).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import BinaryIO, Iterator
from xml.parsers import expat

FEED = 1 << 20
HEAD = 32
FIELD_CAP = 4096  # a title, id or namespace name (MediaWiki titles are at most 255 bytes)


class ExportError(ValueError):
    """The stream is not a MediaWiki export (or not well-formed XML)."""


@dataclass
class Page:
    ns: str
    page_id: str
    title: str
    text: str | None  # None: over the cap (or no <text> at all when size is 0)
    size: int  # UTF-8 bytes of the wikitext
    head: str  # its first HEAD characters, kept whatever the cap (enough to tell a redirect)
    redirect: bool = False  # the page has a <redirect> element (a redirect in any language)


class Export:
    """`lang`, `namespaces` and `namespace_keys` (read from the header on first use), then `pages()`."""

    def __init__(self, fh: BinaryIO, max_text_bytes: int):
        self.fh, self.cap = fh, max_text_bytes
        self.lang, self.namespaces = "", []
        self.namespace_keys: dict[int, str] = {}  # <namespace key="6">File</namespace>: 6 -> File
        self._key = 0
        self.pages_over_cap = 0
        self._parser = expat.ParserCreate()
        self._parser.buffer_text = True
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._parser.CharacterDataHandler = self._chars
        self._stack: list[str] = []
        self._field: list[str] | None = None  # the text of the element being collected
        self._size, self._head, self._limit = 0, "", 0
        self._page: dict = {}
        self._ready: list[Page] = []
        self._header_done = self._eof = False
        self._read_header()

    # --- expat callbacks ---

    def _start(self, name: str, attrs: dict) -> None:
        if not self._stack and name != "mediawiki":
            raise ExportError(f"root element is <{name}>, not a MediaWiki export <mediawiki>")
        if name == "mediawiki":
            self.lang = attrs.get("xml:lang", "")
        elif name == "page":
            self._header_done = True
            self._page = {"ns": "", "page_id": "", "title": "", "text": None, "size": 0, "head": ""}
        parent = self._stack[-1] if self._stack else ""
        if name == "redirect" and parent == "page":
            self._page["redirect"] = True
        elif name == "namespace":
            self._key = int(attrs["key"]) if attrs.get("key", "").lstrip("-").isdigit() else 0
        if (name, parent) in (("namespace", "namespaces"), ("ns", "page"), ("id", "page"), ("title", "page"),
                              ("text", "revision")):
            self._field, self._size, self._head = [], 0, ""
            self._limit = self.cap if name == "text" else FIELD_CAP
        self._stack.append(name)

    def _chars(self, data: str) -> None:
        if self._field is None:
            return
        self._size += len(data.encode("utf-8"))
        if len(self._head) < HEAD:
            self._head += data[:HEAD - len(self._head)]
        if self._size <= self._limit:
            self._field.append(data)
        elif self._field:
            self._field = []  # over the cap: what was kept goes, the rest is only counted

    def _end(self, name: str) -> None:
        self._stack.pop()
        if self._field is not None and name in ("namespace", "ns", "id", "title", "text"):
            value, self._field = "".join(self._field), None
            if name == "namespace":
                if value:
                    self.namespaces.append(value)
                    self.namespace_keys[self._key] = value
            elif name == "text":
                self._page["size"], self._page["head"] = self._size, self._head
                self._page["text"] = value if self._size <= self.cap else None
                self.pages_over_cap += self._size > self.cap
            else:
                self._page[{"id": "page_id"}.get(name, name)] = value
        elif name == "siteinfo":
            self._header_done = True
        elif name == "page":
            self._ready.append(Page(**self._page))

    # --- feeding ---

    def _feed(self) -> None:
        data = self.fh.read(FEED)
        try:
            self._parser.Parse(data, not data)
        except expat.ExpatError as exc:
            raise ExportError(f"not well-formed XML ({exc})") from None
        self._eof = not data

    def _read_header(self) -> None:
        while not self._header_done and not self._eof:
            self._feed()

    def pages(self) -> Iterator[Page]:
        """Every page in file order; one over the cap has `text=None` (and is counted in pages_over_cap)."""
        while True:
            ready, self._ready = self._ready, []
            yield from ready
            if self._eof:
                return
            self._feed()


def log_pages_over_cap(export: Export, label: str) -> None:
    if export.pages_over_cap:
        print(f"{label}: skipped {export.pages_over_cap:,} page(s) whose wikitext is over {export.cap:,} bytes",
              file=sys.stderr)
