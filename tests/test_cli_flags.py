"""The command's flags as a new user meets them: help on every one, the same model flags on
every command that runs a model, engines as a choice, the served model's name."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from agent.cli import main, with_flag_model
from agent.config import Config, ModelConfig
from agent.runtime import with_model_profiles

MODEL_FLAGS = {"--source", "--family", "--engine", "--device", "--dtype", "--trust-remote-code"}


def commands() -> dict[str, click.Command]:
    assert isinstance(main, click.Group)
    return dict(main.commands)


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_flag_has_help(name: str) -> None:
    missing = [p.opts[0] for p in commands()[name].params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing, f"streamagent {name}: flags without help: {missing}"


@pytest.mark.parametrize("name", ["serve", "caption", "ask"])
def test_commands_that_run_a_model_take_the_same_model_flags(name: str) -> None:
    flags = {o for p in commands()[name].params for o in p.opts}
    assert flags >= MODEL_FLAGS
    engine = next(p for p in commands()[name].params if "--engine" in p.opts)
    assert isinstance(engine.type, click.Choice)
    assert {"transformers", "vllm"} <= set(engine.type.choices)
    assert "rapidocr" not in engine.type.choices  # an engine that loads no checkpoint


def test_an_engine_no_plugin_registers_is_refused_naming_the_choices() -> None:
    out = CliRunner().invoke(main, ["serve", "--source", "/nowhere", "--engine", "warp-drive"])
    assert out.exit_code == 2
    assert "'warp-drive' is not one of" in out.output and "transformers" in out.output


def test_serve_help_has_examples() -> None:
    out = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "Examples:" in out and "--served-model-name" in out and "/healthz" in out


def test_tiny_model_help_lists_the_architectures() -> None:
    from agent.tiny import FAMILIES

    out = CliRunner().invoke(main, ["tiny-model", "--help"]).output
    listed = out.split("Architectures (ARCH):", 1)[1]
    assert all(arch in listed for arch in FAMILIES), out


def test_served_model_name_names_the_model_and_its_profile() -> None:
    model = ModelConfig(engine="transformers", source="/models/qwen")
    config = with_model_profiles(with_flag_model(Config(), model, "describe", "qwen-vl"))
    assert list(config.models) == ["qwen-vl"]
    assert config.profiles["qwen-vl"].models == {"describe": "qwen-vl"}
    assert config.profiles["default"] == config.profiles["qwen-vl"]
    unnamed = with_flag_model(Config(), model, "describe")
    assert list(unnamed.models) == ["default-model"]



def test_served_model_name_goes_with_source(root_logging: None) -> None:
    out = CliRunner().invoke(main, ["serve", "--served-model-name", "x", "--port", "0"])
    assert out.exit_code == 1 and "go with --source" in out.output
