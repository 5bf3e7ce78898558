"""The foundation: config schema and defaults, conda envs in step with pyproject, rule conventions."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from conftest import ROOT
from gpt2 import UserError
from gpt2.config import check_config

SCHEMA = ROOT / "schemas" / "config.schema.yaml"


def _pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[=<>]", d)[0].lower(): d for d in deps}


def test_default_config_is_valid_and_schema_defaults_match_it():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert check_config(yaml.safe_load((ROOT / "config.yaml").read_text()), SCHEMA) == config
    assert check_config({}, SCHEMA) == config  # every default in config.yaml is the schema's default


def test_partial_config_gets_defaults():
    config = check_config({"corpus": {"vocab_size": 500}}, SCHEMA)
    assert config["corpus"]["vocab_size"] == 500 and config["corpus"]["seed"] == 0
    assert config["dump"]["source"] == "sample"


@pytest.mark.parametrize("config, key", [
    ({"dump": {"retries": -1}}, "dump.retries"),
    ({"dump": {"sha1": "xyz"}}, "dump.sha1"),
    ({"nonsense": 1}, "unknown key nonsense"),
    ({"models": {"odd": {"layers": 2, "heads": 3, "dims": 64}}}, "models.odd.heads = 3 does not divide"),
    ({"train": {"batch_tokens": 1000}}, "train.batch_tokens = 1000 is not a multiple of"),
    ({"train": {"steps": 0}}, "train.steps = 0 is out of range"),
    ({"train": {"amp": "maybe"}}, "train.amp = 'maybe' must be one of"),
])
@pytest.mark.reliability
def test_bad_values_name_the_key(config, key):
    with pytest.raises(UserError, match=re.escape(key)):
        check_config(config, SCHEMA)


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_conda_envs_mirror_pyproject_pins(env):
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    pins = _pins()
    assert pip, f"{env.name} lists no packages"
    for requirement in pip:
        name = re.split(r"[=<>]", requirement)[0].lower()
        assert pins.get(name) == requirement, f"{env.name}: {requirement} vs pyproject {pins.get(name)}"


def test_every_rule_has_log_and_a_conda_env_that_exists():
    for smk in (ROOT / "rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.split(r"^rule ", text, flags=re.M)[1:]:
            name = rule.split(":", 1)[0]
            if "    shell:" not in rule:
                continue  # a target rule that only gathers inputs (like `all`)
            assert "    log:" in rule, f"{smk.name}: rule {name} has no log:"
            env = re.search(r'conda:\s*\n\s*"\.\./(envs/[\w.]+)"', rule)
            assert env and (ROOT / env[1]).exists(), f"{smk.name}: rule {name} has no existing conda env"
            assert "lambda" not in rule, f"{smk.name}: rule {name} uses a lambda"
