"""The corpus audit: what extraction read, kept and dropped, and why, counted exactly.

Each extraction process counts into an `Audit`; a piece's audit is the sum of its processes', and
results/corpus/audit.json the sum of the pieces' (so a whole wiki built in pieces gives the counts
of one job). A few articles chosen by the seeded article hash (the same whatever the pieces) are
kept as before/after examples.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

EXAMPLES = 3  # before/after examples kept
TOP_TEMPLATES = 50  # dropped templates named in audit.json (the rest summed)

# section -> its meaning, in the order audit.json and the report show them
SECTIONS = {
    "pages": "pages read from the dump, and articles kept (with at least one sentence)",
    "pages dropped": "pages not kept, by reason",
    "lines": "wikitext lines (paragraphs, headings, list items) kept as paragraphs",
    "lines dropped": "lines dropped: not ending a sentence (. ! ?), or table/template markup",
    "sentences": "sentences written to the corpus",
    "sentences dropped": "sentences dropped: a hole where markup held words, too short or too long",
    "bytes": "UTF-8 bytes of wikitext of the articles cleaned",
    "removed bytes": "wikitext bytes removed, by kind (each byte counted once, under its outermost kind)",
    "templates rendered": "templates rendered as text by a rule (templates.py), by name",
    "templates dropped": "wikitext bytes of dropped templates, by name",
}


class Audit:
    def __init__(self, counts: dict | None = None, examples: list | None = None):
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for section, values in (counts or {}).items():
            self.counts[section].update(values)
        self.examples: list[dict] = list(examples or [])

    def add(self, section: str, key: str, n: int = 1) -> None:
        self.counts[section][key] += n

    def offer_example(self, rank: int, example: dict) -> None:
        """Keep `example` if its rank (the seeded article hash) is among the EXAMPLES smallest."""
        self.examples = sorted(self.examples + [{"rank": rank, **example}], key=lambda e: e["rank"])[:EXAMPLES]

    def would_keep(self, rank: int) -> bool:
        return len(self.examples) < EXAMPLES or rank < self.examples[-1]["rank"]

    def merge(self, other: "Audit") -> "Audit":
        for section, values in other.counts.items():
            self.counts[section].update(values)
        for example in other.examples:
            self.offer_example(example["rank"], {k: v for k, v in example.items() if k != "rank"})
        return self

    def to_json(self) -> dict:
        """Every count (all template names): what a piece writes, for the gather to sum."""
        return {"counts": {s: dict(sorted(c.items())) for s, c in sorted(self.counts.items())},
                "examples": self.examples}

    @classmethod
    def from_json(cls, data: dict) -> "Audit":
        return cls(data["counts"], data["examples"])

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "Audit":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def summary(self) -> dict:
        """audit.json: each section's counts, largest first; dropped templates, the top TOP_TEMPLATES."""
        out: dict = {"definitions": SECTIONS}
        for section in SECTIONS:
            ranked = sorted(self.counts.get(section, {}).items(), key=lambda kv: (-kv[1], kv[0]))
            if section == "templates dropped" and len(ranked) > TOP_TEMPLATES:
                rest = ranked[TOP_TEMPLATES:]
                ranked = ranked[:TOP_TEMPLATES] + [(f"({len(rest):,} other names)", sum(n for _, n in rest))]
            out[section] = dict(ranked)
        out["examples"] = [{k: v for k, v in e.items() if k != "rank"} for e in self.examples]
        return out


def gather(paths: list[Path]) -> Audit:
    """The sum of the pieces' audits, in a fixed order (the counts do not depend on it)."""
    total = Audit()
    for path in sorted(map(str, paths)):
        total.merge(Audit.load(Path(path)))
    return total
