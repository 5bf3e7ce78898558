"""Wikitext -> plain paragraphs, with an account (audit.py) of every byte and page it drops.

Run by the patched expanda's workers (patches/0009) in place of its mwparserfromhell cleaning.
One linear scan over the markup tokens (`{{ }}`, `[[ ]]`, `{| |}`, comments, tags) keeps a stack
of the open constructs and decides each one when it closes:
  template   rendered by templates.py's rule for its name (mwparserfromhell parses that template
             alone, the only tree built), else dropped; an unknown one leaves a GAP mark
  link       its label, unless it is a file/image/category link (namespace names from the dump's
             own <siteinfo>), which goes with its caption
  table      dropped; comments, <ref>s and content tags (<math>, <gallery>, ...) dropped
Then a few regular expressions for the inline markup (bold, external links, HTML tags and
entities), and expanda's own line rules: a paragraph must end a sentence; (parenthesised text)
goes. A GAP that left a gap in the sentence (space before, punctuation after) becomes a HOLE,
and the sentence splitter drops a sentence holding a HOLE (patches/0009), counted.
"""

from __future__ import annotations

import collections
import html
import re
from dataclasses import dataclass, field

import mwparserfromhell

from gpt2.articles import article_key
from gpt2.audit import Audit
from gpt2.templates import is_annotation, is_disambiguation, rule_for, template_name
from gpt2.wikixml import Page

HOLE = "\x02"  # a sentence holding this lost words where markup was dropped: it is not kept
GAP = "\x03"  # an unknown template was dropped here; a HOLE when it left a gap

# Tags dropped with their content: none of it reads as part of a sentence.
DROPPED_TAGS = {"ref", "references", "gallery", "math", "chem", "ce", "score", "timeline", "syntaxhighlight",
                "source", "pre", "imagemap", "graph", "mapframe", "maplink", "templatedata", "hiero", "inputbox",
                "categorytree", "table", "nowiki", "code"}
HOLE_TAGS = {"math", "chem", "ce", "score", "hiero", "code"}  # inline content the sentence needs
TOKENS = re.compile(r"<!--|\{\{|\}\}|\{\||\|\}|\[\[|\]\]|<(/?)([a-zA-Z]+)\b[^<>]*?(/?)>")
CLOSERS = {"}}": "{{", "]]": "[[", "|}": "{|"}

# Namespaces MediaWiki knows by these names on every wiki, beside the dump's own names.
CANONICAL_FILE = ("file", "image", "media")
FILE_ALIASES = {"ko": ("그림",)}  # local aliases siteinfo does not list
LIST_TITLES = {"en": re.compile(r"^Lists? of "), "ko": re.compile(r"목록$")}
MAX_RENDERED = 4096  # characters of wikitext a rendered template may span (inline ones are short)
MAX_DEPTH = 40  # deeper openers are text (MediaWiki's expansion limit): bounds the work per byte
EXAMPLE_CHARS = 1500  # of an example's wikitext and text in the audit
TEMPLATE_NAMES = re.compile(r"\{\{\s*([^{}|<>\n]{1,80}?)\s*(?=\||\}\})")


@dataclass(frozen=True)
class Site:
    """What cleaning needs from the dump's <siteinfo>: its language and namespace names (lower case)."""

    lang: str
    file_namespaces: frozenset[str]  # links to these are images: dropped with their caption
    other_namespaces: frozenset[str] = field(default_factory=frozenset)  # category, template, ...: dropped

    @classmethod
    def from_siteinfo(cls, lang: str, namespaces: dict[int, str]) -> "Site":
        files = {namespaces[k].lower() for k in (6, -2) if k in namespaces}
        files |= set(CANONICAL_FILE) | set(FILE_ALIASES.get(lang, ()))
        others = {name.lower() for key, name in namespaces.items() if key not in (0, 6, -2)} | {"category"}
        return cls(lang, frozenset(files), frozenset(others))


@dataclass
class Frame:
    kind: str  # the opener: {{, [[ or {|
    start: int  # where it starts in the wikitext
    pieces: list[str] = field(default_factory=list)  # its content, already cleaned
    size: int = 0  # UTF-8 bytes of its wikitext so far
    removed: int = 0  # of those, bytes already counted as removed inside it


class Scan:
    """The state of one structure scan: the open constructs (innermost last) and the text so far.

    Every step is linear in what it reads, so hostile wikitext (a million unclosed `[[`, deep
    nesting, tags that never close) costs time in proportion to its size."""

    def __init__(self, text: str):
        self.text, self.out, self.stack = text, [], []
        self.open = collections.Counter()  # open constructs by kind: is there one for this closer?
        self.unclosed: set[str] = set()  # tags with no closing tag after some point: not searched again

    def emit(self, piece: str, source: str = "") -> None:
        """Append cleaned text `piece`, which stands for wikitext `source`."""
        if self.stack:
            self.stack[-1].pieces.append(piece)
            self.stack[-1].size += len(source.encode("utf-8")) if not source.isascii() else len(source)
        else:
            self.out.append(piece)

    def push(self, kind: str, start: int) -> None:
        self.stack.append(Frame(kind, start, size=len(kind)))
        self.open[kind] += 1

    def pop(self) -> Frame:
        frame = self.stack.pop()
        self.open[frame.kind] -= 1
        if self.stack:  # its wikitext is the parent's too; what was removed inside stays removed
            self.stack[-1].size += frame.size
            self.stack[-1].removed += frame.removed
        return frame

    def removed(self, size: int) -> None:
        if self.stack:
            self.stack[-1].removed += size


def admit(page: Page, site: Site, drop_lists: bool, audit: Audit) -> bool:
    """Whether the page is an article to clean; a page that is not is counted by its reason."""
    audit.add("pages", "read")
    reason = _drop_reason(page, site)
    if reason == "list page" and not drop_lists:
        audit.add("pages", "list pages kept")
        return True
    if reason:
        audit.add("pages dropped", reason)
    return not reason


def _drop_reason(page: Page, site: Site) -> str:
    if page.ns != "0":
        return "other namespace"
    if page.redirect or page.head.lower().startswith("#redirect"):  # the element, or the English magic word
        return "redirect"
    if page.text is None:
        return "over the size cap" if page.size else "no text"
    if any(is_disambiguation(template_name(n), site.lang) for n in TEMPLATE_NAMES.findall(page.text)):
        return "disambiguation"
    is_list = LIST_TITLES.get(site.lang) and LIST_TITLES[site.lang].search(page.title)
    return "list page" if is_list else ""


class Cleaner:
    """Cleans the articles of one dump (one site), counting into `audit`."""

    def __init__(self, site: Site, audit: Audit):
        self.site, self.audit = site, audit

    def clean(self, wikitext: str) -> str:
        """The article's paragraphs, one a line, each ending a sentence; HOLE marks what was lost."""
        self.audit.add("bytes", "wikitext", len(wikitext.encode("utf-8")))
        text = self.inline(wikitext.replace(HOLE, "").replace(GAP, ""))
        kept = []
        for line in text.splitlines():
            paragraph = self.paragraph(line)
            if paragraph:
                kept.append(paragraph)
        self.audit.add("lines", "kept", len(kept))
        return "\n".join(kept)

    def offer_example(self, seed: int, page_id: str, title: str, wikitext: str) -> None:
        """Keep the article as a before/after example if its seeded hash is among the audit's smallest."""
        rank = article_key(seed, int(page_id))
        if self.audit.would_keep(rank):
            lead = wikitext.split("\n==", 1)[0]  # the lead section, before the first heading
            after = Cleaner(self.site, Audit()).clean(lead).replace(HOLE, "[hole]")
            self.audit.offer_example(rank, {"page_id": int(page_id), "title": title,
                                            "before": lead[:EXAMPLE_CHARS], "after": after[:EXAMPLE_CHARS]})

    # --- the structure scan ---

    def inline(self, text: str) -> str:
        """`text` with its markup constructs resolved (nested ones first) and inline markup removed."""
        scan = Scan(text)
        pos = 0
        while (m := TOKENS.search(text, pos)) is not None:
            scan.emit(text[pos:m.start()], text[pos:m.start()])
            token, pos = m.group(), m.end()
            if token == "<!--":
                end = text.find("-->", pos)
                pos = len(text) if end < 0 else end + 3
                self._removed(scan, "comments", text[m.start():pos])
            elif len(scan.stack) < MAX_DEPTH and (token in ("{{", "[[") or token == "{|" and (
                    m.start() == 0 or text[m.start() - 1] == "\n")):
                scan.push(token, m.start())
            elif token in CLOSERS and scan.open[CLOSERS[token]]:
                while scan.stack[-1].kind != CLOSERS[token]:  # an unclosed construct inside: its text stays
                    self._unwind(scan)
                scan.stack[-1].size += len(token)
                self._close(scan, pos)
            elif m.group(2):
                pos = self._tag(scan, m)
            else:  # a stray closer, `{|` not at a line start, or nesting too deep: a character of text
                scan.emit(token[0], token[0])
                pos = m.start() + 1
        scan.emit(text[pos:], text[pos:])
        while scan.stack:
            self._unwind(scan)
        return self._inline_markup("".join(scan.out))

    def _unwind(self, scan: Scan) -> None:
        frame = scan.pop()
        scan.emit(frame.kind + "".join(frame.pieces))

    def _removed(self, scan: Scan, kind: str, source: str) -> None:
        size = len(source.encode("utf-8"))
        self.audit.add("removed bytes", kind, size)
        scan.emit("", source)
        scan.removed(size)

    def _close(self, scan: Scan, end: int) -> None:
        frame = scan.pop()
        content = "".join(frame.pieces)
        own = frame.size - frame.removed  # bytes not already counted inside
        if frame.kind == "{|":
            kind, rendered = "tables", ""
        elif frame.kind == "[[":
            kind, rendered = self._link(content)
        else:
            kind, rendered = self._template(content, scan.text, frame.start, end, own)
        if kind:
            self.audit.add("removed bytes", kind, own)
            scan.removed(own)
        scan.emit(rendered)

    def _link(self, content: str) -> tuple[str, str]:
        """(kind removed or '', text) of a link."""
        target, _, label = content.partition("|")
        prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
        if prefix in self.site.file_namespaces and not target.startswith(":"):
            return "file links and galleries", ""
        if prefix in self.site.other_namespaces and not target.startswith(":"):
            return "category and other links", ""
        if "|" in label:  # only a file link has options; a label keeps its last part
            label = label.rsplit("|", 1)[1]
        return "", (label or target).strip().lstrip(":")

    def _template(self, content: str, text: str, start: int, end: int, size: int) -> tuple[str, str]:
        """(kind removed or '', text) of a template of `size` own bytes: rendered by its rule, else dropped."""
        name = template_name(content.split("|", 1)[0])
        rule = rule_for(name, self.site.lang)
        if rule is None or end - start > MAX_RENDERED:
            self.audit.add("templates dropped", name, size)
            parser_function = ":" in name  # {{#if:...}}, {{DEFAULTSORT:...}}: never words of a sentence
            return "templates", "" if parser_function or is_annotation(name) else GAP
        self.audit.add("templates rendered", name)
        positional, named = self._arguments(text[start:end])
        return "", rule(positional, named, self.site.lang).strip()

    def _arguments(self, raw: str) -> tuple[list[str], dict[str, str]]:
        """The template's parameters, parsed by mwparserfromhell, each value cleaned as inline text."""
        template = mwparserfromhell.parse(raw).nodes[0]
        positional, named = [], {}
        sub = Cleaner(self.site, Audit())  # a value's own markup is not counted twice
        for param in template.params:
            value = " ".join(sub.inline(str(param.value)).split())
            if param.showkey:
                named[str(param.name).strip().lower()] = value
            else:
                positional.append(value)
        return positional, named

    def _tag(self, scan: Scan, m: re.Match) -> int:
        """Where the scan goes on after tag `m`: past its content when the tag is dropped with it."""
        closing, name, self_closing = m.group(1), m.group(2).lower(), m.group(3)
        if name not in DROPPED_TAGS:
            scan.emit(" " if name == "br" else "", m.group())
            return m.end()
        end = m.end()
        if not closing and not self_closing and name not in scan.unclosed:
            close = re.compile(rf"</{name}\s*>", re.I).search(scan.text, end)
            if close:
                end = close.end()
            else:
                scan.unclosed.add(name)
        kind = ("references" if name in ("ref", "references") else
                "file links and galleries" if name in ("gallery", "imagemap") else "content tags")
        self._removed(scan, kind, scan.text[m.start():end])
        if name in HOLE_TAGS:
            scan.emit(HOLE)
        return end

    # --- inline markup and lines ---

    def _inline_markup(self, text: str) -> str:
        text = EXTERNAL_LINK.sub(lambda m: m.group(1), text)
        text = BOLD_ITALIC.sub("", MAGIC_WORD.sub("", text))
        if "&" in text:
            text = html.unescape(text).replace("\xa0", " ")
        return text

    def paragraph(self, line: str) -> str:
        """One wikitext line as a kept paragraph, or '' (counted) when it does not end a sentence."""
        line = LIST_MARK.sub("", line.strip())
        if not line or line[0] in "|!{}=" or not END.search(line):
            if line:
                self.audit.add("lines dropped", "no end punctuation" if line[0] not in "|!{}" else "markup")
            return ""
        line = _without_parentheses(line)
        line = GAP_HOLE.sub(HOLE, line).replace(GAP, "")
        line = SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(line.split()))
        if line[0] in ",.;:":
            line = HOLE + line  # it lost its head
        line = DOUBLE_QUOTES.sub('"', line)
        return SINGLE_QUOTES.sub("'", line)


EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]{0,2000}\s*([^\]\n]{0,300})\]")  # bounded: linear
BOLD_ITALIC = re.compile(r"'{2,}")
MAGIC_WORD = re.compile(r"__[A-Z]+__")
LIST_MARK = re.compile(r"^[*#:;]+\s*")
END = re.compile(r"[.!?][\"'\u201d\u2019]?$")
PARENS = re.compile(r"[()]")
GAP_HOLE = re.compile(rf"(?:(?<=\s)|^){GAP}(?=\s*[,.;:])")
SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])(?=\s|$|\")")
DOUBLE_QUOTES = re.compile("[\u201c\u201d]")
SINGLE_QUOTES = re.compile("[\x60\xb4\u2018\u2019]")


def _without_parentheses(line: str) -> str:
    """expanda's rule, parenthesised text goes (nested too), in one pass: the text of every balanced
    ( ... ) is dropped, as repeating the removal of innermost pairs would, an unmatched one stays."""
    kept: list[str] = []
    opens: list[int] = []  # where in `kept` each unmatched "(" is
    pos = 0
    for m in PARENS.finditer(line):
        kept.append(line[pos:m.start()])
        pos = m.end()
        if m.group() == "(":
            opens.append(len(kept))
            kept.append("(")
        elif opens:
            del kept[opens.pop():]
        else:
            kept.append(")")
    kept.append(line[pos:])
    return "".join(kept)
