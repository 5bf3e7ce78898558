"""The files rendered from the declarations in params.py: config.yaml, the JSON schema and
docs/settings.md. `python -m gpt2 write-config --root .` writes them; `--check` (run by a test)
fails when one is out of date."""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from gpt2 import UserError
from gpt2.params import MODELS, SECTIONS, Switch, choices, config_schema, default, settings

# What Snakemake re-runs when a setting changes (its params, or its rule's command, change), by
# section, and the settings that differ from their section.
RERUNS = {
    "dump": "the dump and all after",
    "corpus": "the corpus jobs that take it, and all after",
    "shards": "the shards and all after",
    "train": "`train` and all after",
    "evaluate": "`evaluate`, `baseline` and all after",
    "baselines": "`baseline` for the models added or changed, and the report's baselines table",
    "report": "the report's samples",
    "downstream": "`downstream` (and `build_tasks` for items)",
}
RERUNS_FIELD = {
    ("dump", "url"): "the dump and all after, with dump.source url only",
    ("dump", "path"): "the dump and all after, with dump.source path only",
    ("dump", "name"): "everything: the dump gets a new name under resources/dumps/",
    ("train", "threads"): "nothing (how fast, not what)",
    ("train", "mem_mb"): "nothing (what the scheduler allocates)",
    ("train", "runtime"): "nothing (what the scheduler allocates)",
    ("report", "models"): "the report, for the models added",
    ("downstream", "extra_tasks"): "`downstream`",
    ("downstream", "batch"): "`downstream`",
}


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        plain = value and value not in ("on", "off", "yes", "no", "true", "false") and all(
            c.isalnum() or c in "._-/:" for c in value) and not value[0].isdigit()
        return value if plain else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def _comment(text: str, indent: str = "") -> list[str]:
    return [f"{indent}# {line.strip()}".rstrip() for line in text.strip().splitlines()]


def render_config_yaml() -> str:
    """config.yaml: every default with its help as a comment."""
    lines = _comment("Defaults for the whole workflow, rendered from src/gpt2/params.py by "
                     "`python -m gpt2 write-config --root .`\n(edit the declarations there, not this file). "
                     "Override any key with --config key=value\nor --configfile my.yaml; "
                     "docs/settings.md lists every key with its range.")
    for name, cls in SECTIONS.items():
        if name == "train":
            lines += ["", *_comment("Architectures, picked by the {model} in results/eval_{model}.json.\n"
                                    "Add your own name with layers/heads/dims (heads must divide dims)."), "models:"]
            lines += [f"  {m}: {{" + ", ".join(f"{k}: {v}" for k, v in dataclasses.asdict(a).items()) + "}"
                      for m, a in MODELS.items()]
        lines += ["", *_comment(cls.__doc__), f"{name}:"]
        for f in settings(cls, ("both", "config")):
            entry = f"  {f.name}: {_yaml_value(default(f))}"
            lines.append(f"{entry:<34} # {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def render_schema_yaml() -> str:
    import yaml

    head = "# Rendered from src/gpt2/params.py by `python -m gpt2 write-config --root .`; do not edit.\n"
    return head + yaml.safe_dump(config_schema(), sort_keys=False, width=110, allow_unicode=True)


def _type_name(kind: Any) -> str:
    if kind == Switch:
        return "auto / on / off"
    if choices(kind):
        return " / ".join(map(str, choices(kind)))
    if typing.get_origin(kind) is list:
        return "list of text"
    return {bool: "true / false", int: "integer", float: "number", str: "text"}[kind]


def _range(meta: dict) -> str:
    signs = (("minimum", ">="), ("above", ">"), ("maximum", "<="), ("below", "<"))
    parts = [f"{sign} {meta[key]:,}" if isinstance(meta[key], int) else f"{sign} {meta[key]}"
             for key, sign in signs if meta[key] is not None]
    if meta["pattern"]:
        parts.append(f"matches `{meta['pattern']}`")
    return ", ".join(parts)


def _cell(text: Any) -> str:
    """Markdown table cell text: one line, no column break, no `<name>` read as an HTML tag."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;")


def render_settings_md() -> str:
    """docs/settings.md: every config key (section, key, type, default, range, help, what it re-runs)."""
    lines = ["# Settings", "",
             "Every key of `config.yaml`, rendered from `src/gpt2/params.py` by "
             "`python -m gpt2 write-config --root .` (a test fails when this page is out of date). Set them "
             "in `config.yaml`, a `--configfile`, or `--config section='{key: value}'`; the commands of "
             "`python -m gpt2` take the same names as flags (`--key`). \"Re-runs\" is what Snakemake runs "
             "again after a change.", "",
             "`models:` maps a name (the `{model}` of `results/eval_{model}.json`) to `layers`, `heads` and "
             "`dims` (heads must divide dims); the defaults: " +
             ", ".join(f"`{m}` {a.layers}/{a.heads}/{a.dims}" for m, a in MODELS.items()) + "."]
    for name, cls in SECTIONS.items():
        lines += ["", f"## `{name}:`", "", " ".join(cls.__doc__.split()), "",
                  "| key | type | default | range | meaning | re-runs |", "|---|---|---|---|---|---|"]
        for f in settings(cls, ("both", "config")):
            reruns = RERUNS_FIELD.get((name, f.name), RERUNS[name])
            lines.append("| " + " | ".join(_cell(c) for c in (
                f"`{name}.{f.name}`", _type_name(f.type), f"`{_yaml_value(default(f))}`", _range(f.metadata),
                f.metadata["help"], reruns)) + " |")
    return "\n".join(lines) + "\n"


def write_config(root: Path, check: bool) -> None:
    """Write (or with `check`, compare) config.yaml, the schema and docs/settings.md under `root`."""
    files = {Path(root) / "config.yaml": render_config_yaml(),
             Path(root) / "schemas" / "config.schema.yaml": render_schema_yaml(),
             Path(root) / "docs" / "settings.md": render_settings_md()}
    for path, text in files.items():
        if check:
            if not path.is_file() or path.read_text() != text:
                raise UserError(f"{path} is out of date with src/gpt2/params.py: "
                                "run `python -m gpt2 write-config --root .`")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
