"""Config validation with one-line errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from gpt2 import UserError


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
            instance[name] = _copy(sub["default"])
        if isinstance(instance.get(name), dict) and sub.get("type") == "object":
            _fill_defaults(sub, instance[name])


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def check_config(config: dict, schema_path: str | Path) -> dict:
    """Validate `config` in place against the JSON schema, filling defaults.

    Raises UserError with one line: the offending key, its value and what is allowed.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        error = min(errors, key=lambda e: len(e.absolute_path))
        raise UserError(f"config: {_message(error)}; fix it in config.yaml or with --config (see {schema_path})")
    _fill_defaults(schema, config)
    _check_consistency(config)
    return config


def _check_consistency(config: dict) -> None:
    """Rules across keys that a JSON schema cannot say."""
    for name, arch in config["models"].items():
        if arch["dims"] % arch["heads"]:
            raise UserError(f"config: models.{name}.heads = {arch['heads']} does not divide "
                            f"models.{name}.dims = {arch['dims']}; pick heads that divide dims")
    for name in config["report"]["models"]:
        if name not in config["models"]:
            raise UserError(f"config: report.models lists {name!r}, which is not under models: "
                            f"({', '.join(config['models'])})")
    t = config["train"]
    per_pass = t["micro_batch"] * t["seq_len"] * max(1, t["gpus"]) * t["nodes"]
    if t["batch_tokens"] % per_pass:
        raise UserError(f"config: train.batch_tokens = {t['batch_tokens']} is not a multiple of "
                        f"micro_batch x seq_len x max(1, gpus) x nodes = {per_pass}")
