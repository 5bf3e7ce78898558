"""The article table: each article's split, page id, title and number of lines, in corpus order.

One row a line, tab-separated; `corpus.articles.tsv` starts with a header row, a gather bucket's
`articles.tsv` does not. This module writes and reads both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

HEADER = b"split\tpage_id\ttitle\tlines\n"


@dataclass(frozen=True)
class Article:
    split: str  # test, valid or train
    page_id: int
    title: str
    lines: int  # its lines in the corpus files, which hold the articles one after another
    row: bytes  # the row as written, to copy it on unchanged


def article_key(seed: int, page_id: int) -> int:
    """The article's place in the shuffled corpus: a 64-bit hash of the seed and page id."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{page_id}".encode(), digest_size=8).digest(), "big")


def article_row(split: str, page_id: int, title: str, lines: int) -> str:
    """One article's row (a MediaWiki title never holds a tab or a newline)."""
    return f"{split}\t{page_id}\t{title}\t{lines}\n"


def read_articles(path: str | Path) -> Iterator[Article]:
    """The articles of a table, in order; the header row, where there is one, is skipped."""
    with open(path, "rb") as fh:
        for line in fh:
            if line == HEADER:
                continue
            split, page_id, *title, lines = line.rstrip(b"\n").split(b"\t")
            yield Article(split.decode(), int(page_id), b"\t".join(title).decode("utf-8"), int(lines), line)
