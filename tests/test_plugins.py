from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

from agent import hookimpl, hookspecs
from agent.config import Config, HandlerConfig, ModelConfig, ProfileConfig
from agent.errors import ConfigError
from agent.plugins import collect, get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakePlugin

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in vars(hookspecs).items()
         if inspect.isfunction(fn) and name.startswith("register_")]


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    docs = (ROOT / "docs" / "plugin-hooks.md").read_text()
    headings = re.findall(r"^#+ `?(.+?)`?$", docs, flags=re.M)
    for name in HOOKS:
        fn = getattr(hookspecs, name)
        signature = f"{name}{inspect.signature(fn)}".replace("'", "")
        assert signature in headings, f"docs/plugin-hooks.md lacks a heading `{signature}`"


def test_a_misspelt_hookimpl_fails_at_start_up() -> None:
    class Typo:
        @hookimpl
        def register_engine(self, register: object) -> None: ...

    with pytest.raises(pluggy.PluginValidationError):
        get_plugin_manager([Typo()])


def test_built_ins_load_by_entry_point_like_third_party_plugins() -> None:
    pm = get_plugin_manager()
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert {"text_in_view", "faces", "speech"} <= names
    reg = collect(pm)
    assert {"rapidocr", "haar-faces", "pocketsphinx"} <= set(reg.engines)
    assert {"ocr": "rapidocr", "faces": "haar-faces", "asr": "pocketsphinx"}.items() <= {
        n: m.engine for n, m in reg.models.items()}.items()


def test_duplicate_registrations_are_refused() -> None:
    with pytest.raises(ConfigError, match="two plugins registered a engine named 'fake'"):
        collect(get_plugin_manager([FakePlugin(), FakePlugin()]))


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (Config(models={"x": ModelConfig(engine="warp-drive")}), "known engines: ['fake']"),
        (Config(profiles={"default": ProfileConfig(handlers=["nope"])}), "known handlers"),
        (Config(handlers={"echo": HandlerConfig(model="missing")}), "'missing', which is not"),
        (Config(handlers={"ghost": HandlerConfig()}), "unknown handler 'ghost'"),
    ],
)
def test_bad_config_fails_at_start_up_with_a_clear_message(config: Config, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Runtime.build(config, get_plugin_manager([FakePlugin()]))
    assert words in str(info.value)


def test_streamagent_plugins_lists_plugins_and_hooks() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "plugins", "--json"],
                         capture_output=True, text=True, check=True)
    listing = json.loads(out.stdout)
    by_name = {p["name"]: p["hooks"] for p in listing["plugins"]}
    assert by_name["speech"] == ["register_engines", "register_handlers", "register_models"]
    assert "colors" in by_name, "the example plugin is not installed: run `make test`"
    assert "colors" in listing["handlers"]
    assert by_name["transformers"] == ["register_engines", "register_families",
                                       "register_handlers"]
    assert {"qwen2.5-omni", "minicpm-o"} <= set(listing["families"])
    assert "system-in-user" in listing["families"], "the example family plugin: `make test`"
