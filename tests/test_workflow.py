"""The foundation: settings declared once (params.py) and everything derived from them, conda envs in step
with pyproject, rule conventions, lint and formatting."""

from __future__ import annotations

import dataclasses
import inspect
import re
import shlex
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, gpt2, snakemake
from gpt2 import UserError
from gpt2.cli import COMMANDS, build_parser, settings_from
from gpt2.config import check_config
from gpt2.params import (MODELS, REFERENCE_DEFAULTS, SECTIONS, Architecture, EvaluateParams, TrainParams,
                         from_values)
from gpt2.render import render_config_yaml, render_schema_yaml, render_settings_md


def _pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[=<>]", d)[0].lower(): d for d in deps}


def test_default_config_is_valid_and_schema_defaults_match_it():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert check_config(yaml.safe_load((ROOT / "config.yaml").read_text())) == config
    assert check_config({}) == config  # every default in config.yaml is the schema's default


def test_partial_config_gets_defaults():
    config = check_config({"corpus": {"vocab_size": 500}})
    assert config["corpus"]["vocab_size"] == 500 and config["corpus"]["seed"] == 0
    assert config["dump"]["source"] == "sample"


def test_values_inside_a_command_line_mapping_get_their_declared_types():
    """`--config train='{steps: 300, ...}'` reaches the config with every value a string."""
    config = check_config({"train": {"steps": "300", "lr": "0.001", "init_prior": "false", "amp": "off"},
                           "models": {"small": {"layers": "2", "heads": "2", "dims": "128"}}})
    assert (config["train"]["steps"], config["train"]["lr"], config["train"]["init_prior"]) == (300, 0.001, False)
    assert config["train"]["amp"] == "off" and config["models"]["small"]["dims"] == 128
    with pytest.raises(UserError, match=re.escape("train.steps = 'many' has the wrong type")):
        check_config({"train": {"steps": "many"}})
    # (--config takes every word after it, so the target goes first)
    proc = snakemake(ROOT, extra=("-n", "results/eval_small.json", "--config", "train={steps: 300, lr: 0.001}"))
    assert proc.returncode == 0, proc.stderr[-1000:]


def test_documented_snakemake_commands_put_targets_before_config_options():
    """--config and --configfile take every word after them: a target written there is read as config."""
    docs = [ROOT / "README.md", ROOT / "profiles/README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "presets").glob("*.yaml"))]
    commands = [line.strip().lstrip("#").strip() for doc in docs for line in
                doc.read_text().replace("\\\n", " ").splitlines()]
    commands = [shlex.split(c) for c in commands if re.match(r"(\.venv/bin/)?snakemake ", c) and "--config" in c]
    assert len(commands) >= 6
    for words in commands:
        for i, word in enumerate(words):
            rest = words[i + 1:]
            after = rest[1:] if word == "--configfile" else rest if word == "--config" else []
            stray = [w for w in after[: next((j for j, w in enumerate(after) if w.startswith("-")), len(after))]
                     if "=" not in w]
            assert not stray, f"{' '.join(words)}: {stray} would be read as config"


@pytest.mark.parametrize("config, key", [
    ({"dump": {"retries": -1}}, "dump.retries"),
    ({"dump": {"sha1": "xyz"}}, "dump.sha1"),
    ({"nonsense": 1}, "unknown key nonsense"),
    ({"models": {"odd": {"layers": 2, "heads": 3, "dims": 64}}}, "models.odd.heads = 3 does not divide"),
    ({"train": {"batch_tokens": 1000}}, "train.batch_tokens = 1000 is not a multiple of"),
    ({"train": {"steps": 0}}, "train.steps = 0 is out of range"),
    ({"train": {"amp": "maybe"}}, "train.amp = 'maybe' must be one of"),
    ({"baselines": {"models": ["gpt2", "/models/gpt2/"]}}, "baselines.models lists 'gpt2' and '/models/gpt2/'"),
    ({"baselines": {"models": ["/"]}}, "baselines.models entry '/' does not end in a usable name"),
])
@pytest.mark.reliability
def test_bad_values_name_the_key(config, key):
    with pytest.raises(UserError, match=re.escape(key)):
        check_config(config)


def test_the_torch_floor_is_the_one_the_code_needs():
    """torch.optim.Muon arrived in 2.9: pyproject's lower bound is gpt2.optim's, which `make test-floor` tests."""
    from gpt2.optim import TORCH_FLOOR

    assert re.fullmatch(rf"torch>={re.escape(TORCH_FLOOR)},<=[\d.]+", _pins()["torch"])
    assert "test-floor" in (ROOT / ".ci/run").read_text()


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


def test_config_yaml_and_schema_are_rendered_from_the_declarations():
    assert (ROOT / "config.yaml").read_text() == render_config_yaml()
    assert (ROOT / "schemas/config.schema.yaml").read_text() == render_schema_yaml()
    assert (ROOT / "docs/settings.md").read_text() == render_settings_md()
    assert gpt2("write-config", "--check", "--root", str(ROOT)).returncode == 0
    config = yaml.safe_load(render_config_yaml())
    for name, cls in SECTIONS.items():  # every key a section declares, with its default, nothing else
        assert config[name] == {f.name: dataclasses.asdict(cls())[f.name] for f in dataclasses.fields(cls)
                                if f.metadata["where"] != "cli"}, name
    assert config["models"] == {name: dataclasses.asdict(arch) for name, arch in MODELS.items()}


@pytest.mark.reliability
def test_a_hand_edited_config_yaml_is_caught(tmp_path):
    (tmp_path / "schemas").mkdir()
    steps = TrainParams().steps
    (tmp_path / "config.yaml").write_text(render_config_yaml().replace(f"steps: {steps}", f"steps: {steps + 1}"))
    (tmp_path / "schemas/config.schema.yaml").write_text(render_schema_yaml())
    proc = gpt2("write-config", "--check", "--root", str(tmp_path))
    assert proc.returncode == 2 and "config.yaml is out of date" in proc.stderr.splitlines()[-1]


def test_the_cli_the_workflow_and_the_api_run_the_same_configuration():
    some_file = str(ROOT / "config.yaml")  # the flags name existing files; their content is not read here
    args = build_parser().parse_args(["train", "--shards", some_file])
    workflow = check_config({})
    assert settings_from(TrainParams, args) == TrainParams() == from_values(TrainParams, workflow["train"])
    assert settings_from(Architecture, args) == Architecture() == Architecture(**workflow["models"]["small"])
    evaluate = build_parser().parse_args(["evaluate", "--model_path", some_file, "--shards", some_file])
    assert settings_from(EvaluateParams, evaluate) == EvaluateParams() == from_values(EvaluateParams,
                                                                                    workflow["evaluate"])


def test_reference_defaults_only_on_request_and_reference_names_as_aliases():
    some_file = str(ROOT / "config.yaml")
    argv = ["train", "--shards", some_file, "--reference_defaults"]
    assert build_parser().parse_args(argv).reference_defaults  # main() then parses again with the reference table
    args = build_parser(REFERENCE_DEFAULTS).parse_args(argv)
    params, arch = settings_from(TrainParams, args), settings_from(Architecture, args)
    for key, value in REFERENCE_DEFAULTS.items():
        assert getattr(params if hasattr(params, key) else arch, key) == value, key
    assert (params.optimizer, params.schedule) == ("adamw", "cosine")  # the reference's recipe, not our defaults
    aliased = build_parser().parse_args(["train", "--shards", some_file, "--total_steps", "7", "--base_lr", "0.5",
                                         "--batch_train", "2", "--wd_rate", "0", "--eval_steps", "3",
                                         "--save_steps", "4", "--use_amp", "--use_grad_ckpt"])
    p = settings_from(TrainParams, aliased)
    assert (p.steps, p.lr, p.micro_batch, p.weight_decay, p.eval_every, p.checkpoint_every, p.amp,
            p.grad_ckpt) == (7, 0.5, 2, 0.0, 3, 4, "on", True)
    e = build_parser().parse_args(["evaluate", "--model_path", some_file, "--shards", some_file, "--batch_eval", "5",
                                   "--total_steps", "2", "--use_gpu"])
    assert (e.batch_eval, e.max_batches, e.device) == (5, 2, "cuda")


def test_each_command_function_takes_exactly_what_the_table_declares():
    """A stage function gets its files by name and its settings as dataclasses -- no setting of its own."""
    for name, command in COMMANDS.items():
        module, func = command.target.split(":")
        function = getattr(__import__(module, fromlist=[func]), func)
        hints = typing.get_type_hints(function)
        expected = {arg.dest for arg in command.args} | ({"expect"} if command.checks_architecture else set())
        parameters = inspect.signature(function).parameters
        taken = {p for p in parameters if hints.get(p) not in command.params}
        assert taken == expected, name
        assert {hints[p] for p in parameters if p not in taken} == set(command.params), name
        assert all(p.default is inspect.Parameter.empty for p in parameters.values()), name


def test_rules_pass_each_setting_under_its_config_name(tmp_path):
    config = {"corpus": {"limit_alphabet": 123}, "shards": {"shard_tokens": 4096},
              "train": {"steps": 7, "lr": 0.25, "batch_eval": 3, "amp": "off"}, "evaluate": {"batch_eval": 5},
              "report": {"models": ["tiny"], "sample_tokens": 9}}
    proc = snakemake(tmp_path, "report_all", config=config, extra=("-n", "-p", "--forceall"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    commands = [line for line in proc.stdout.splitlines() if "python -m gpt2" in line]
    def command(name: str) -> str:
        return next(c for c in commands if f"python -m gpt2 {name} " in c)
    assert "--limit_alphabet=123" in command("train-vocab")
    assert "--shard_tokens=4096" in command("shard-bucket") and "--shard_tokens=4096" in command("gather-shards")
    train = command("train")
    assert all(f in train for f in ("--steps=7", "--lr=0.25", "--batch_eval=3", "--amp=off", "--layers=2"))
    assert "--mem_mb" not in train and "--nodes" not in train  # scheduler settings stay with the scheduler
    assert "--batch_eval=5" in command("evaluate") and "--amp=off" in command("evaluate")
    assert "--sample_tokens=9" in command("samples")


def _shell_strings() -> dict[str, str]:
    """`rules/x.smk:line` -> the text of each `shell:` directive (its string lines joined)."""
    found = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() != "shell:":
                continue
            indent, body = len(line) - len(line.lstrip()), []
            for more in lines[number + 1:]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                body.append(more.strip())
            found[f"{path.relative_to(ROOT)}:{number + 1}"] = " ".join(body)
    return found


def test_every_value_in_a_shell_command_is_quoted():
    """A wildcard, input, output, param, log or threads reaches the shell only through Snakemake's :q."""
    commands = _shell_strings()
    assert len(commands) >= 15  # every rule of every stage was read
    for where, text in commands.items():
        fields = re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", text)
        assert fields, where
        assert [f for f in fields if not f.endswith(":q")] == [], where


def test_snakemake_lint_and_snakefmt_are_clean():
    lint = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--lint"], cwd=ROOT,
                          capture_output=True, text=True)
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout[-3000:]
    fmt = subprocess.run([str(Path(sys.executable).with_name("snakefmt")), "--check", "."], cwd=ROOT,
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_readme_is_a_front_door_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "profiles/README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to {target}"


def test_files_named_in_comments_exist():
    for path in [ROOT / "pyproject.toml", *(ROOT / "envs").glob("*.yaml")]:
        for name in re.findall(r"tests/\w+\.py", path.read_text()):
            assert (ROOT / name).is_file(), f"{path.name} names {name}"
