"""Config validation with one-line errors that name the key and the fix.

The schema is rendered from the declarations in params.py; this module adds
the rules across keys that a JSON schema cannot say.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema

from gpt2 import UserError
from gpt2.params import (SECTIONS, Architecture, TrainParams, accumulation, choices, config_schema, from_values,
                         settings)

SETTINGS_DOC = "docs/settings.md"  # every key with its type, range and meaning


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _message(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"{key}." if error.absolute_path else ""
        return f"unknown key {where}{extra[0]} (allowed here: {allowed})"
    if error.validator == "enum":
        return f"{key} = {error.instance!r} must be one of {', '.join(map(str, error.validator_value))}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if error.validator in bounds:
        return f"{key} = {error.instance!r} is out of range (must be {bounds[error.validator]} {error.validator_value})"
    if error.validator == "type":
        return f"{key} = {error.instance!r} has the wrong type (expected {error.validator_value})"
    return f"{key} = {error.instance!r}: {error.message}"


def _fill_defaults(schema: dict, instance: dict) -> None:
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(name), dict) and sub.get("type") == "object":
            _fill_defaults(sub, instance[name])


def _normalise_switches(config: dict) -> None:
    """YAML reads a bare on/off as a boolean: auto/on/off keys get their word back."""
    for name, cls in SECTIONS.items():
        for f in settings(cls, ("both", "config")):
            value = config[name][f.name]
            if choices(f.type) and isinstance(value, bool):
                config[name][f.name] = "on" if value else "off"


def _retype_command_line_strings(config: dict) -> None:
    """Snakemake's --config reads the values inside a mapping as strings (train='{steps: 300}' gives
    '300'): declared numbers and booleans get their type back. A value that does not parse stays a
    string, for the schema to name."""
    sections = [(cls, config.get(name)) for name, cls in SECTIONS.items()]
    sections += [(Architecture, arch) for arch in (config.get("models") or {}).values()]
    for cls, values in sections:
        if not isinstance(values, dict):
            continue
        for f in settings(cls, ("both", "config")):
            value = values.get(f.name)
            if isinstance(value, str) and f.type in (int, float, bool):
                values[f.name] = _typed(value, f.type)


def _typed(text: str, kind: type) -> int | float | bool | str:
    if kind is bool:
        return {"true": True, "yes": True, "false": False, "no": False}.get(text.lower(), text)
    try:
        return kind(text)
    except ValueError:
        return text


def _normalise_parts(config: dict) -> None:
    """dump.parts may be written as a number or a YAML list: make it the string the schema takes."""
    parts = config.get("dump", {}).get("parts")
    if isinstance(parts, int) or (isinstance(parts, list) and all(isinstance(p, int) for p in parts)):
        config["dump"]["parts"] = ",".join(map(str, parts if isinstance(parts, list) else [parts]))


def _refuse_removed_keys(config: dict) -> None:
    """Keys an earlier version had, with what replaces them."""
    corpus = config.get("corpus") if isinstance(config.get("corpus"), dict) else {}
    if "unit" in corpus:
        raise UserError("config: corpus.unit is gone: every corpus is built of whole articles, each keeping its "
                        "sentences in order (the sentence unit was expanda's one-job build); remove the key")
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    if "warmup_steps" in train:
        raise UserError("config: train.warmup_steps is now train.warmup_ratio, the fraction of the steps the "
                        "warmup takes (it follows train.steps); e.g. 0.05")
    if "chunks" in corpus:
        raise UserError("config: corpus.chunks is now two keys: corpus.extract_jobs (extraction pieces to aim "
                        "for) and corpus.buckets (shuffle buckets); set those instead")


def check_config(config: dict) -> dict:
    """Validate `config` in place, fill every default and return it.

    Raises UserError with one line: the offending key, its value and what is allowed.
    """
    _retype_command_line_strings(config)
    _normalise_parts(config)
    _refuse_removed_keys(config)
    schema = config_schema()
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        error = min(errors, key=lambda e: len(e.absolute_path))
        raise UserError(f"config: {_message(error)}; fix it in config.yaml or with --config (see {SETTINGS_DOC})")
    _fill_defaults(schema, config)
    _normalise_switches(config)
    _check_consistency(config)
    return config


def _check_patterns(config: dict) -> None:
    """A declared pattern holds for the whole value: JSON Schema's search lets `$` match before a final
    newline ("a100\n"), and such values reach shell lines (train.gpu_model) and file names."""
    for section, cls in SECTIONS.items():
        for f in settings(cls, ("both", "config")):
            value = config.get(section, {}).get(f.name)
            if f.metadata["pattern"] and isinstance(value, str) and not re.fullmatch(f.metadata["pattern"], value):
                raise UserError(f"config: {section}.{f.name} = {value!r} does not match {f.metadata['pattern']}; fix "
                                f"it in config.yaml or with --config (see {SETTINGS_DOC})")


def _check_consistency(config: dict) -> None:
    """Rules across keys that a JSON schema cannot say."""
    _check_patterns(config)
    for name, arch in config["models"].items():
        if arch["dims"] % arch["heads"]:
            raise UserError(f"config: models.{name}.heads = {arch['heads']} does not divide "
                            f"models.{name}.dims = {arch['dims']}; pick heads that divide dims")
    for name in config["report"]["models"]:
        if name not in config["models"]:
            raise UserError(f"config: report.models lists {name!r}, which is not under models: "
                            f"({', '.join(config['models'])})")
    _check_dump_path(config["dump"])
    baseline_names(config["baselines"]["models"])
    train = from_values(TrainParams, config["train"])
    try:
        accumulation(train, max(1, train.gpus) * train.nodes)
    except UserError as exc:
        raise UserError(f"config: {exc}") from None


def baseline_names(models: list[str]) -> dict[str, str]:
    """results/baseline_{name}.json's name -> the hub id or folder of each of baselines.models: the id's
    last part (gpt2 for openai-community/gpt2, gpt2-medium for ~/models/gpt2-medium/)."""
    names: dict[str, str] = {}
    for model in models:
        name = Path(model.rstrip("/")).name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise UserError(f"config: baselines.models entry {model!r} does not end in a usable name (letters, "
                            "digits, . _ -); name a hub id such as gpt2 or a folder")
        if name in names:
            raise UserError(f"config: baselines.models lists {names[name]!r} and {model!r}, which share the name "
                            f"{name!r}; keep one, or copy one to a folder of another name")
        names[name] = model
    return names


# The workflow's own outputs (relative to its working directory): Snakemake deletes an output
# before its job runs, so a dump.path in there would delete the user's dump.
OWN_OUTPUTS = ("resources/dumps", "results")


def _check_dump_path(dump: dict) -> None:
    if dump["source"] != "path" or not dump["path"]:
        return
    path = Path(dump["path"]).resolve()
    for folder in OWN_OUTPUTS:
        if path.is_relative_to(Path(folder).resolve()):
            raise UserError(f"config: dump.path {dump['path']} is inside the workflow's own outputs ({folder}/), "
                            "which a run deletes and rewrites; move or copy your dump elsewhere and point "
                            "dump.path there")
