"""The plugin hooks. Each runs once at start-up and registers objects through a callback;
per-window work happens in the async methods of those objects, never in a hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from agent.config import ModelConfig, VoiceConfig
    from agent.engine import Engine
    from agent.families import Family
    from agent.handler import Handler
    from agent.server_tools import ServerTool
    from agent.voice import Voice

hookspec = pluggy.HookspecMarker("streamagent")
hookimpl = pluggy.HookimplMarker("streamagent")


@hookspec
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    """Register engine classes, by their ``kind``: ``register(RapidOCREngine)``."""


@hookspec
def register_models(register: Callable[[str, ModelConfig], None]) -> None:
    """Register default models by name: ``register("ocr", ModelConfig(engine="rapidocr"))``.

    A model of the same name in the config file wins."""


@hookspec
def register_handlers(register: Callable[[type[Handler]], None]) -> None:
    """Register handler classes, by their ``name``: ``register(TextInViewHandler)``."""


@hookspec
def register_families(register: Callable[[Family], None]) -> None:
    """Register model families, by their ``name``: ``register(Family("qwen2.5-omni", ...))``.

    A family overrides what differs from the generic path for one family of checkpoints."""


@hookspec
def register_voices(register: Callable[[Voice], None]) -> None:
    """Register voices (speech out), by their ``name``: ``register(FliteVoice("flite", ...))``.

    A session that asks for audio names one (or a preset name, said by the default voice)."""


@hookspec
def register_voice_engines(register: Callable[[str, Callable[[str, VoiceConfig], Voice]],
                                              None]) -> None:
    """Register ways to read a voice from a file, by the name ``voices.NAME.engine`` gives:
    ``register("piper", PiperVoice)``, called with the voice's name and its config; it raises
    ``ConfigError`` for a file it cannot read."""


@hookspec
def register_tools(register: Callable[[ServerTool], None]) -> None:
    """Register tools the server runs itself, by their ``name``: ``register(ServerTool("look",
    "Look at the camera now", run))``. A session offers them to its model with
    ``streamagent.server_tools``; the client sees each call and its result."""
