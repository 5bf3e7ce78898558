"""Markup debris in corpus lines: what a reader would see as broken text, by class.

A line may show several classes; the rate counts each broken line once. Used by the corpus tests
(and benchmarks/bench_extract.py) to measure the cleaning on real Wikipedia text.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

CLASSES = {
    # wikitext syntax left as text: [[, ]], {{, }}, {|, |}, a pipe, bold/italic quotes, a heading
    "markup": re.compile(r"\[\[|\]\]|\{\{|\}\}|\{\||\|\}|\||''|==|__[A-Z]+__"),
    # image and gallery options kept from a file link: thumb, 200px, upright, alt=
    "image options": re.compile(r"\b(?:thumb|thumbnail|frameless)\b(?=\s*(?:\||right|left|center|upright))|\b\d+\s?px\b|\b(?:alt|upright)=", re.I),
    # HTML/XML that was not rendered: a tag or an entity
    "html": re.compile(r"</?[a-zA-Z][^<>]{0,200}>|&(?:[a-zA-Z]+|#\d+|#x[0-9a-fA-F]+);"),
    # a hole: a space before , . ; : where a word or a dropped template was
    "space before punctuation": re.compile(r"\s[,.;:](?=\s|$)"),
    # a sentence that lost its head: it starts with punctuation
    "lost head": re.compile(r"^\s*[,.;:)\]]"),
    # brackets left empty or holding only punctuation
    "empty brackets": re.compile(r"\(\s*[,.;:]*\s*\)|\[\s*\]"),
}


def classes(line: str) -> list[str]:
    """The debris classes seen in one corpus line."""
    return [name for name, pattern in CLASSES.items() if pattern.search(line)]


def measure(lines: list[str]) -> tuple[float, Counter, dict[str, str]]:
    """(rate of broken lines, lines per class, one example per class)."""
    per_class: Counter = Counter()
    example: dict[str, str] = {}
    broken = 0
    for line in lines:
        found = classes(line)
        broken += bool(found)
        for name in found:
            per_class[name] += 1
            example.setdefault(name, line.strip()[:160])
    return broken / max(len(lines), 1), per_class, example


if __name__ == "__main__":
    text = Path(sys.argv[1]).read_text(encoding="utf-8").splitlines()
    rate, per_class, example = measure(text)
    print(f"{rate:.2%} of {len(text):,} lines broken")
    for name, n in per_class.most_common():
        print(f"  {name}: {n:,}  e.g. {example[name]!r}")
