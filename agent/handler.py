"""Modality handlers: the per-session objects plugins register.

A handler sees every window in order through ``feed`` (cheap, on the event loop), which returns
a unit of work or ``None``. Work is handed to ``respond`` latest-wins: while a response is being
generated, at most one newer unit waits and a still newer one replaces it (the drop is counted).
``respond`` may yield nothing, which means "nothing worth saying". ``answer`` serves
``response.create`` (question mode).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, TypeVar

from agent import metrics
from agent.engine import ModelRequest, Turn, Usage
from agent.media import Frame, Modality, Window
from agent.pool import Pool

T = TypeVar("T")
response_usage: ContextVar[list[Usage] | None] = ContextVar("response_usage", default=None)
"""Set by the session for the response being generated: the usage of every model call made
for it is collected there (token counts for ``response.done``)."""
response_options: ContextVar[Mapping[str, Any] | None] = ContextVar("response_options",
                                                                    default=None)
"""Set by the session for the response being generated: ``max_new_tokens`` (the client's
``max_output_tokens``) caps every model call made for it, and ``lora`` (the session's adapter)
is passed to every model call that names none."""


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler gets from its session: the pool, its model and its options."""

    pool: Pool
    model: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    session_id: str = ""

    def stream(self, request: ModelRequest) -> AsyncIterator[str]:
        """Stream text from this handler's model."""
        if self.model is None:
            raise RuntimeError("this handler has no model configured")
        options = dict(request.options)
        chosen = response_options.get() or {}
        cap = chosen.get("max_new_tokens")
        if cap is not None:
            options["max_new_tokens"] = min(int(options.get("max_new_tokens", cap)), cap)
        if chosen.get("lora"):
            options.setdefault("lora", chosen["lora"])
        request = replace(request, options=options, session=request.session or self.session_id)
        collected = response_usage.get()
        if collected is not None:
            collected.append(request.usage)
        return metrics.timed(self.model, self.pool.stream(self.model, request))


@dataclass(frozen=True, slots=True)
class Question:
    """A ``response.create``: the latest user text, the latest media and the conversation."""

    text: str
    instructions: str = ""
    frame: Frame | None = None
    frames: tuple[Frame, ...] = ()
    window: Window | None = None
    history: tuple[Turn, ...] = ()


class Handler:
    """Base class of every handler. Subclasses set ``name`` and ``modality``."""

    name: ClassVar[str] = ""
    modality: ClassVar[Modality] = "image"
    default_model: ClassVar[str | None] = None
    """The model used when the config names none."""
    enabled_by_default: ClassVar[bool] = True
    """Whether the default profile turns this handler on."""
    feed_off_loop: ClassVar[bool] = False
    """Run ``feed`` on a worker thread (in order) when it does real work, such as a VAD."""
    gated: ClassVar[bool] = False
    """Whether scene-change gating is on by default: a live window whose frame shows what this
    handler last acted on is skipped (config ``handlers.NAME.gating`` overrides it)."""

    def __init__(self, ctx: HandlerContext) -> None:
        self.ctx = ctx

    def feed(self, window: Window) -> object | None:
        """Called for every window, in order. Return work for ``respond``, or ``None``."""
        return window if window.has(self.modality) else None

    def clear_audio(self) -> None:
        """Forget buffered audio state (``input_audio_buffer.clear``); override if kept."""

    async def respond(self, work: Any) -> AsyncIterator[str]:
        """Live mode: stream a response to ``work``, or yield nothing to stay silent."""
        return
        yield  # pragma: no cover

    async def answer(self, question: Question) -> AsyncIterator[str]:
        """Question mode: stream this handler's part of the answer (nothing: no part)."""
        return
        yield  # pragma: no cover


class Mailbox(Generic[T]):
    """A one-slot latest-wins hand-off: ``put`` never blocks, a newer item replaces the older."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._full = False
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, item: T) -> None:
        if self._full:
            self.dropped += 1
            metrics.handler_drops.inc()
        self._item, self._full = item, True
        self._ready.set()

    async def get(self) -> T:
        await self._ready.wait()
        self._ready.clear()
        item, self._item, self._full = self._item, None, False
        return item  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self._full)
