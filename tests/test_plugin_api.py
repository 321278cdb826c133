"""Plugins use only the public API. The built-in plugins (``plugins/``) and the example
third-party plugins (``examples/*/``) import from ``agent`` only the names it exports
(``agent.__all__``, listed in docs/plugin-hooks.md), never an ``agent`` submodule, and no
plugin imports another plugin (a plugin package importing its own modules is one plugin).
A plugin's tests may use ``agent.testing``: folders named ``tests`` and ``test_*.py`` files are
not scanned."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import agent

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = frozenset(agent.__all__)


def is_test(path: Path) -> bool:
    return ("tests" in path.parts or path.name.startswith("test_")
            or path.name == "conftest.py")


def plugin_sources() -> list[Path]:
    found = [*(ROOT / "plugins").rglob("*.py"), *(ROOT / "examples").glob("*/**/*.py")]
    return sorted(p for p in found if not is_test(p.relative_to(ROOT)))


def module_of(path: Path) -> str:
    """The dotted module a source file is imported as (``examples/<dist>/`` is a sys.path root)."""
    rel = path.relative_to(ROOT)
    parts = list(rel.parts[2:] if rel.parts[0] == "examples" else rel.parts)
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def plugin_of(module: str) -> str:
    """The plugin a module belongs to: ``plugins.hf.engine`` → ``plugins.hf``."""
    return ".".join(module.split(".")[:2]) if module.startswith("plugins.") else module


def violations(source: str, module: str, is_package: bool = False) -> list[tuple[int, str, str]]:
    """``(line, import, what is wrong)`` for each import that breaks the rules in ``module``."""
    own = plugin_of(module) if module.startswith("plugins.") else None
    found: list[tuple[int, str, str]] = []

    def other_plugin(target: str) -> bool:
        return target.startswith("plugins.") and plugin_of(target) != own

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name == "agent" or name.startswith("agent."):
                    found.append((node.lineno, ast.unparse(node),
                                  "import names with `from agent import ...`"))
                elif name == "plugins" or other_plugin(name):
                    found.append((node.lineno, ast.unparse(node), "a plugin imports another"))
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[:len(package) - node.level + 1]
                target = ".".join([*base, *([target] if target else [])])
            if target == "agent":
                private = [a.name for a in node.names if a.name not in PUBLIC]
                if private:
                    found.append((node.lineno, ast.unparse(node),
                                  f"not in agent.__all__: {', '.join(private)}"))
            elif target.startswith("agent."):
                found.append((node.lineno, ast.unparse(node),
                              f"{target} is not the public API: import from `agent`"))
            elif target == "plugins":
                if any(other_plugin(f"plugins.{a.name}") for a in node.names):
                    found.append((node.lineno, ast.unparse(node), "a plugin imports another"))
            elif other_plugin(target):
                found.append((node.lineno, ast.unparse(node), "a plugin imports another"))
    return found


def test_plugins_import_only_the_public_api_and_no_other_plugin() -> None:
    sources = plugin_sources()
    assert any(p.name == "speech.py" for p in sources), "no plugin sources found"
    assert any("examples" in p.parts for p in sources), "no example plugin sources found"
    bad = [f"{path.relative_to(ROOT)}:{line}: {text}  ({why})"
           for path in sources
           for line, text, why in violations(path.read_text(), module_of(path),
                                             path.name == "__init__.py")]
    assert not bad, "plugins reach past agent's public API:\n" + "\n".join(bad)


@pytest.mark.parametrize(("module", "source"), [
    ("plugins.speech", "from agent.media import Audio"),
    ("plugins.speech", "import agent.families"),
    ("plugins.speech", "import agent"),
    ("plugins.speech", "from agent import Handler, collect"),
    ("plugins.speech", "from agent.testing import FakeEngine"),
    ("plugins.speech", "def f():\n    from agent.plugins import collect"),
    ("plugins.hf.handlers", "from plugins import speech"),
    ("plugins.hf.handlers", "from plugins.speech import PocketSphinxEngine"),
    ("plugins.hf.handlers", "import plugins.faces"),
    ("plugins.hf.handlers", "from .. import faces"),
    ("streamagent_colors", "from plugins.hf import TransformersEngine"),
    ("streamagent_colors", "from agent import testing"),
])
def test_the_check_catches(module: str, source: str) -> None:
    assert violations(source, module)


@pytest.mark.parametrize(("module", "source"), [
    ("plugins.speech", "from agent import Handler, Segmenter, hookimpl"),
    ("plugins.hf.engine", "from plugins.hf.inputs import auto_load"),
    ("plugins.hf.families", "from plugins.hf import minicpm"),
    ("plugins.hf.engine", "from .inputs import auto_load"),
    ("streamagent_colors", "import numpy as np\nfrom agent import ModelConfig"),
])
def test_the_check_allows(module: str, source: str) -> None:
    assert violations(source, module) == []


def test_every_exported_name_exists_and_is_documented() -> None:
    docs = (ROOT / "docs" / "plugin-hooks.md").read_text()
    assert [n for n in agent.__all__ if not hasattr(agent, n)] == []
    undocumented = [n for n in agent.__all__ if not re.search(rf"`{re.escape(n)}\b", docs)]
    assert not undocumented, f"docs/plugin-hooks.md does not list agent.{undocumented}"
