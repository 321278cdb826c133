"""The model pool: model names to engines. In-process here; Ray Serve has the same interface."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import replace

from agent import toolstream
from agent.engine import Engine, ModelRequest
from agent.errors import (
    ConfigError,
    EngineError,
    InvalidRequest,
    StreamAgentError,
    UnknownModel,
)
from agent.parts import Part
from agent.scheduler import Scheduler

log = logging.getLogger(__name__)


class Pool(abc.ABC):
    @property
    @abc.abstractmethod
    def names(self) -> list[str]:
        """The model names this pool serves."""

    async def start(self) -> None:
        """Load every model."""

    async def close(self) -> None:
        """Free every model."""

    @abc.abstractmethod
    def stream(self, model: str, request: ModelRequest) -> AsyncGenerator[Part, None]:
        """Stream the answer's parts from ``model``; closing the iterator aborts generation."""

    async def health(self) -> dict[str, bool]:
        return {}

    def adapters(self, model: str) -> list[str] | None:
        """The LoRA adapters ``model`` serves (config ``options.lora``), or ``None`` when this
        pool cannot tell (the replica's engine then refuses an unknown one itself)."""
        return None

    def modalities(self, model: str) -> frozenset[str] | None:
        """What ``model`` takes in, once loaded; ``None`` when this pool cannot tell."""
        return None

    def converses(self, model: str) -> bool | None:
        """Whether ``model`` reads a session's timeline (``Engine.converses``); ``None`` when
        this pool cannot tell."""
        return None


class LocalPool(Pool):
    """Every engine in the gateway process: the embedded default, no Ray needed."""

    def __init__(self, engines: Mapping[str, Engine], start_timeout_s: float = 600) -> None:
        self.engines = dict(engines)
        self.start_timeout_s = start_timeout_s
        self.schedulers = {name: scheduler_for(engine) for name, engine in self.engines.items()}

    @property
    def names(self) -> list[str]:
        return sorted(self.engines)

    async def start(self) -> None:
        for name, engine in self.engines.items():
            began = time.perf_counter()
            log.info("loading model %s (engine %s)", name, engine.kind)
            try:
                await asyncio.wait_for(engine.start(), self.start_timeout_s)
            except Exception as exc:
                raise ConfigError(f"model {name!r} failed to load: {exc}") from exc
            log.info("model %s ready in %.1f s", name, time.perf_counter() - began)

    async def close(self) -> None:
        for engine in self.engines.values():
            await engine.close()

    async def stream(self, model: str, request: ModelRequest) -> AsyncGenerator[Part, None]:
        engine = self.engines.get(model)
        if engine is None:
            raise UnknownModel(f"no model named {model!r}; the pool has {self.names}")
        async with self.schedulers[model].slot(request.session, patient=request.live):
            async for part in guarded_stream(engine, request):
                yield part

    def modalities(self, model: str) -> frozenset[str] | None:
        engine = self.engines.get(model)
        return engine.modalities if engine is not None else None

    def converses(self, model: str) -> bool | None:
        engine = self.engines.get(model)
        return engine.converses if engine is not None else None

    def adapters(self, model: str) -> list[str] | None:
        engine = self.engines.get(model)
        return sorted(engine.config.options.get("lora") or {}) if engine is not None else []

    async def health(self) -> dict[str, bool]:
        return {name: await healthy(engine, self.schedulers[name])
                for name, engine in self.engines.items()}


def scheduler_for(engine: Engine) -> Scheduler:
    return Scheduler(engine.name, engine.workers, engine.config.max_queue)


async def guarded_stream(engine: Engine, request: ModelRequest) -> AsyncGenerator[Part, None]:
    """The engine's stream, closed when the consumer stops; its failures as ``EngineError``.
    The request's functions: an enforced choice becomes the engine's output schema, and the
    model's calls become ``ToolCallDelta`` parts; a model that takes no tools (no tool format,
    no constrained decoding: the embedded models) answers as without them. A ``voice`` the
    model does not have is refused."""
    if request.voice and request.voice not in engine.voices:
        has = (", ".join(sorted(engine.voices)) if engine.voices else
               "none (an omni checkpoint speaks with options.speech on the transformers engine)")
        raise InvalidRequest(f"model {engine.name!r} has no voice {request.voice!r} of its "
                             f"own; its voices: {has}", param="voice")
    if request.tools and engine.tool_format is None and not (engine.constrains or
                                                             engine.calls_tools):
        request = replace(request, tools=(), tool_choice="auto")
    if not engine.calls_tools:
        request = toolstream.prepare(request, engine.constrains, engine.name)
    try:
        async with contextlib.aclosing(engine.stream(request)) as agen:
            if not request.tools or engine.calls_tools:  # no layer a token does not need
                async for part in agen:
                    yield part
                return
            async with contextlib.aclosing(
                    toolstream.tool_parts(agen, request, engine.tool_format)) as parts:
                async for part in parts:
                    yield part
    except StreamAgentError:
        raise
    except Exception as exc:
        raise EngineError(f"model {engine.name!r} failed: {exc}") from exc


async def healthy(engine: Engine, scheduler: Scheduler, timeout_s: float = 5.0) -> bool:
    """The engine's own check, within a timeout, and no request stuck past ``stuck_after_s``."""
    if scheduler.oldest_running_s() > engine.config.stuck_after_s:
        log.warning("model %s: a request has run %.0f s (stuck_after_s %.0f)", engine.name,
                    scheduler.oldest_running_s(), engine.config.stuck_after_s)
        return False
    try:
        await asyncio.wait_for(engine.check_health(), timeout_s)
    except Exception as exc:
        log.warning("model %s is unhealthy: %r", engine.name, exc)
        return False
    return True
