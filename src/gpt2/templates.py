"""The templates whose text belongs in the sentence, and how each is rendered (docs/pipeline.md lists them).

MediaWiki expands a template from its page on the wiki, which a dump does not hold. A few inline
templates carry words of the sentence (`{{lang|fr|César}}`, `{{convert|10|km}}`, `{{As of|2015}}`);
they are rendered here by a rule. Every other template is dropped: citation and maintenance
annotations silently, the rest leaving a mark that makes its sentence a hole when the drop left a
gap (wikitext.py). Names match as MediaWiki does, ignoring case and `_` vs space.
"""

from __future__ import annotations

from typing import Callable

Rule = Callable[[list[str], dict[str, str], str], str]  # (positional, named, language) -> text

EN_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
             "October", "November", "December"]

# Units as `convert` writes them out (anything else: its code as written).
UNITS = {"km": "km", "m": "m", "cm": "cm", "mm": "mm", "mi": "miles", "ft": "feet", "in": "inches",
         "yd": "yards", "nmi": "nautical miles", "km2": "km²", "sqmi": "square miles", "m2": "m²",
         "sqft": "square feet", "acre": "acres", "ha": "hectares", "e6acre": "million acres", "kg": "kg",
         "g": "g", "t": "tonnes", "lb": "pounds", "oz": "ounces", "st": "stone", "l": "litres", "L": "litres",
         "usgal": "US gallons", "impgal": "imperial gallons", "C": "°C", "F": "°F", "K": "K",
         "km/h": "km/h", "mph": "mph", "kn": "knots", "m/s": "m/s", "hp": "hp", "kW": "kW", "MW": "MW"}
RANGE_WORDS = {"-": "–", "–": "–", "to": "to", "and": "and", "or": "or", "x": "×", "by": "by", "+/-": "±"}


def _number(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _date(pos: list[str], named: dict[str, str], lang: str) -> str:
    """year|month|day as the language writes a date (en: month first unless df=y)."""
    year, month, day = (_number(p) for p in (pos + ["", "", ""])[:3])
    if year is None:
        return " ".join(p for p in pos[:3] if p)  # a date written out already, e.g. {{dts|4 July 1776}}
    if lang == "ko":
        return f"{year}년" + (f" {month}월" if month else "") + (f" {day}일" if month and day else "")
    if not month or not 1 <= month <= 12:
        return str(year)
    name = EN_MONTHS[month - 1]
    if not day:
        return f"{name} {year}"
    day_first = named.get("df", "").lower() in ("y", "yes", "true", "1")
    return f"{day} {name} {year}" if day_first else f"{name} {day}, {year}"


def _as_of(pos: list[str], named: dict[str, str], lang: str) -> str:
    if lang == "ko":
        return f"{_date(pos, named, lang)} 기준"
    words = "as of" if named.get("lc", "").lower() in ("y", "yes", "on", "true") else "As of"
    return f"{words} {_date(pos, named, lang)}"


def _convert(pos: list[str], named: dict[str, str], lang: str) -> str:
    """The value(s) and unit: {{convert|10|km|mi}} -> '10 km'; {{convert|3|to|5|m}} -> '3 to 5 m'."""
    if len(pos) >= 4 and pos[1] in RANGE_WORDS:
        joiner = RANGE_WORDS[pos[1]]
        sep = "" if joiner == "–" else " "
        return f"{pos[0]}{sep}{joiner}{sep}{pos[2]} {UNITS.get(pos[3], pos[3])}"
    if len(pos) >= 2:
        return f"{pos[0]} {UNITS.get(pos[1], pos[1])}"
    return pos[0] if pos else ""


def _arg(n: int, default: str = "") -> Rule:
    """Positional parameter n (1-based): the text the template shows."""
    return lambda pos, named, lang: pos[n - 1] if len(pos) >= n else default


def _text(text: str) -> Rule:
    return lambda pos, named, lang: text


def _joined(sep: str) -> Rule:
    return lambda pos, named, lang: sep.join(pos)


def _currency(symbol: str) -> Rule:
    return lambda pos, named, lang: symbol + (pos[0] if pos else "")


# name (lower case) -> rule, for every language; LANGUAGE_RULES add or override per language.
RULES: dict[str, Rule] = {
    # foreign words and transliterations: the words themselves
    "lang": _arg(2), "transl": lambda pos, named, lang: pos[-1] if pos else "", "nihongo": _arg(1),
    "native name": _arg(2), "script": _arg(2), "ill": _arg(1), "interlanguage link": _arg(1),
    # formatting wrappers: their content
    "nowrap": _arg(1), "nobr": _arg(1), "small": _arg(1), "smaller": _arg(1), "big": _arg(1),
    "larger": _arg(1), "em": _arg(1), "strong": _arg(1), "sic": _arg(1), "abbr": _arg(1),
    "keypress": _joined("+"), "vanchor": _arg(1), "visible anchor": _arg(1), "mvar": _arg(1),
    "var": _arg(1), "angbr": lambda pos, named, lang: f"⟨{pos[0]}⟩" if pos else "",
    "flag": lambda pos, named, lang: named.get("name") or (pos[0] if pos else ""),
    "flagcountry": _arg(1), "chem": _joined(""), "nts": _arg(1), "ntsh": _arg(1),
    # numbers, dates and quantities
    "convert": _convert, "cvt": _convert, "as of": _as_of,
    "date": _arg(1), "dts": _date, "birth date": _date, "death date": _date, "start date": _date,
    "end date": _date, "birth date and age": _date, "death date and age": _date,
    "start date and age": _date, "birth year and age": _arg(1), "circa": lambda p, n, l: "c. " + (p[0] if p else ""),
    "c.": lambda p, n, l: "c. " + (p[0] if p else ""), "frac": _joined("/"),
    "val": lambda pos, named, lang: " ".join([pos[0] if pos else ""] + ([named["u"]] if named.get("u") else [])),
    "us$": _currency("US$"), "usd": _currency("US$"), "gbp": _currency("£"), "£": _currency("£"),
    "€": _currency("€"), "eur": _currency("€"), "inr": _currency("₹"), "jpy": _currency("¥"),
    # punctuation and spacing
    "'s": _text("'s"), "'": _text("'"), "nbsp": _text(" "), "·": _text(" · "), "dot": _text(" · "),
    "ndash": _text("–"), "mdash": _text("—"), "snd": _text(" – "), "spaced ndash": _text(" – "),
    # eras, small capitals, citations of scripture
    "bc": _text("BC"), "bce": _text("BCE"), "ad": _text("AD"), "ce": _text("CE"), "sc": _arg(1),
    "smallcaps": _arg(1), "bibleverse": _joined(" "),
}
LANGUAGE_RULES: dict[str, dict[str, Rule]] = {
    "ko": {"llang": _arg(2), "출생일": _date, "사망일": _date, "출생일과 나이": _date, "사망일과 나이": _date,
           "날짜": _date, "기준": _as_of},
}

# Dropped without a mark: citations and maintenance notes never carry words of the sentence.
ANNOTATION_PREFIXES = ("cite", "citation", "sfn", "sfnp", "sfnm", "harv", "harvnb", "harvp", "efn", "refn", "rp", "r",
                       "cn", "fact", "clarify",
                       "dead link", "page needed", "dubious", "when", "who", "which", "vague", "by whom",
                       "according to whom", "better source", "failed verification", "verify", "update",
                       "wayback", "webarchive", "full citation", "additional citation", "specify", "year needed",
                       "ref", "note", "ipa", "respell", "pronunciation", "audio", "flagicon", "coord",
                       "inflation", "increase", "decrease", "steady", "출처", "각주", "설명 필요")

# The templates that make a page a disambiguation page, per language (and in every one).
DISAMBIGUATION = {
    "": {"disambiguation", "disambig", "dab", "disamb", "dbig", "hndis", "geodis", "numberdis"},
    "ko": {"동음이의", "동음이의어", "동명이인"},
}


def template_name(raw: str) -> str:
    """A template's name as MediaWiki matches it: case and `_` vs space ignored, `Template:` dropped."""
    name = " ".join(raw.replace("_", " ").split()).lower()
    return name.removeprefix("template:").removeprefix("틀:")


def rule_for(name: str, lang: str) -> Rule | None:
    """The rendering rule of template `name` (from template_name) in `lang`, or None: dropped."""
    if name.startswith("lang-") and len(name) <= 12:  # {{lang-fr|César}}: the words, not "French:"
        return _arg(1)
    return LANGUAGE_RULES.get(lang, {}).get(name) or RULES.get(name)


def is_annotation(name: str) -> bool:
    """A citation or maintenance template: dropped without leaving a gap in the sentence."""
    return name.startswith("cite") or any(name == p or name.startswith((p + " ", p + "-")) for p in ANNOTATION_PREFIXES)


def is_disambiguation(name: str, lang: str) -> bool:
    return (name in DISAMBIGUATION[""] or name in DISAMBIGUATION.get(lang, ()) or
            name.endswith(" disambiguation"))
