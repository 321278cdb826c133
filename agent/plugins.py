"""The plugin manager: built-in and third-party plugins load the same way, by entry point."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from agent import hookspecs
from agent.config import ModelConfig, VoiceConfig
from agent.direct import DirectHandler
from agent.engine import Engine
from agent.errors import ConfigError
from agent.families import Family
from agent.handler import Handler
from agent.server_tools import BUILT_IN, ServerTool
from agent.voice import Voice

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "streamagent"


def get_plugin_manager(plugins: Iterable[object] | None = None) -> pluggy.PluginManager:
    """A manager with exactly ``plugins``, or every installed entry point when ``None``.

    ``STREAMAGENT_PLUGINS=a,b`` limits entry points to those names;
    ``STREAMAGENT_TRACE_PLUGINS=1`` prints every hook call.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    if plugins is None:
        only = os.environ.get("STREAMAGENT_PLUGINS")
        if only:
            for name in only.split(","):
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name.strip())
        else:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    else:
        for plugin in plugins:
            pm.register(plugin)
    pm.check_pending()
    if os.environ.get("STREAMAGENT_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


@dataclass
class Registry:
    """What the plugins registered."""

    engines: dict[str, type[Engine]] = field(default_factory=dict)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    handlers: dict[str, type[Handler]] = field(default_factory=dict)
    families: dict[str, Family] = field(default_factory=dict)
    voices: dict[str, Voice] = field(default_factory=dict)
    voice_engines: dict[str, Callable[[str, VoiceConfig], Voice]] = field(default_factory=dict)
    tools: dict[str, ServerTool] = field(default_factory=dict)


def collect(pm: pluggy.PluginManager) -> Registry:
    reg = Registry()

    def add(kind: str, table: dict[str, Any], name: str, value: Any) -> None:
        if not name:
            raise ConfigError(f"a plugin registered a {kind} without a name: {value!r}")
        if name in table:
            raise ConfigError(f"two plugins registered a {kind} named {name!r}")
        table[name] = value

    add("handler", reg.handlers, DirectHandler.name, DirectHandler)  # behind model names
    pm.hook.register_engines(register=lambda cls: add("engine", reg.engines, cls.kind, cls))
    pm.hook.register_models(register=lambda name, cfg: add("model", reg.models, name, cfg))
    pm.hook.register_handlers(register=lambda cls: add("handler", reg.handlers, cls.name, cls))
    pm.hook.register_families(register=lambda fam: add("family", reg.families, fam.name, fam))
    pm.hook.register_voices(register=lambda voice: add("voice", reg.voices, voice.name, voice))
    pm.hook.register_voice_engines(
        register=lambda kind, make: add("voice engine", reg.voice_engines, kind, make))
    for tool in BUILT_IN:  # the server's own, beside the plugins'
        add("tool", reg.tools, tool.name, tool)
    pm.hook.register_tools(register=lambda tool: add("tool", reg.tools, tool.name, tool))
    return reg


def describe(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Each plugin's name and the hooks it implements (for ``streamagent plugins``)."""
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        dist = next((d for p, d in pm.list_plugin_distinfo() if p is plugin), None)
        version = getattr(dist, "version", None) if dist else None
        out.append({"name": name, "hooks": hooks, "version": version})
    return sorted(out, key=lambda p: str(p["name"]))


@functools.cache
def installed_families() -> dict[str, Family]:
    """The families of every installed plugin: for an engine built outside a ``Runtime`` (a
    Ray Serve replica, ``streamagent caption``)."""
    return collect(get_plugin_manager()).families
