"""Modality handlers: the per-session objects plugins register.

A handler sees every window in order through ``feed`` (cheap, on the event loop), which returns
a unit of work or ``None``. Work is handed to ``respond`` latest-wins: while a response is being
generated, at most one newer unit waits and a still newer one replaces it (the drop is counted).
``respond`` may yield nothing, which means "nothing worth saying". ``answer`` serves
``response.create`` (question mode). Both yield text (``str``) or answer parts
(``agent.parts``); a handler passes on the model's parts that it does not handle itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, TypeVar

from agent import metrics
from agent.engine import TOOL_CHOICES, ModelRequest, Tool, Turn
from agent.media import Audio, Frame, Modality, Window
from agent.options import Options
from agent.parts import Part, text_only
from agent.pool import Pool
from agent.timeline import Memory

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ResponseOptions:
    """What one response asks of every model call made for it: a token cap (the client's
    ``max_output_tokens``), a LoRA adapter (used by calls that name none), whether it
    answers a live window (its calls wait for room in a full model queue), and the client's
    functions with its ``tool_choice`` (calls that bring their own tools keep them)."""

    max_new_tokens: int | None = None
    lora: str | None = None
    live: bool = False
    tools: tuple[Tool, ...] = ()
    """The client's functions, offered to every model call of the response."""
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    speaker: tuple[str, str] | None = None
    """``(model, speaker)``: calls to that model speak the answer themselves, as that speaker
    (a session speaking in a model's own voice, ``agent.voice.ModelVoice``)."""

    @property
    def forces_call(self) -> bool:
        """Whether the answer must be a function call (``required`` or a function's name)."""
        return bool(self.tools) and self.tool_choice not in ("auto", "none")

    def apply(self, request: ModelRequest, model: str | None = None) -> ModelRequest:
        """``request`` under these options, for a call to ``model``."""
        if self.speaker is not None and self.speaker[0] == model:
            request = replace(request, voice=self.speaker[1])
        if self.live:
            request = replace(request, live=True)
        if self.tools and not request.tools:
            # a choice naming a tool not offered here (a server tool, offered in questions
            # only) leaves the model free
            named = {t.name for t in self.tools}
            choice = self.tool_choice if self.tool_choice in named or \
                self.tool_choice in TOOL_CHOICES else "auto"
            request = replace(request, tools=self.tools, tool_choice=choice,
                              parallel_tool_calls=self.parallel_tool_calls)
        if self.max_new_tokens is None and not self.lora:
            return request
        options = dict(request.options)
        if self.max_new_tokens is not None:
            cap = self.max_new_tokens
            options["max_new_tokens"] = min(int(options.get("max_new_tokens", cap)), cap)
        if self.lora:
            options.setdefault("lora", self.lora)
        return replace(request, options=options)


@dataclass(slots=True)
class SessionOptions:
    """The session's current response options, shared with its handlers: live responses
    use them (a question carries its own, in ``Question.options``)."""

    response: ResponseOptions = field(default_factory=lambda: ResponseOptions(live=True))
    instructions: str = ""
    """The session's instructions (a live response that renders from a timeline starts with
    them, as questions do, so that both share one prompt prefix)."""
    memory: Memory = field(default_factory=Memory)
    """The session's timelines, one per model (``agent.timeline``); off unless a session
    turns it on."""


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler gets from its session: the pool, its model and its options."""

    pool: Pool
    model: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    session_id: str = ""
    session: SessionOptions = field(default_factory=SessionOptions)

    def stream(self, request: ModelRequest,
               options: ResponseOptions | None = None) -> AsyncIterator[Part]:
        """Stream the answer's parts from this handler's model, under ``options`` (a
        question's ``Question.options``; by default, the session's). Pass on the parts you do
        not handle: ``Usage`` is how the response counts tokens."""
        if self.model is None:
            raise RuntimeError("this handler has no model configured")
        chosen = options if options is not None else self.session.response
        request = chosen.apply(replace(request, session=request.session or self.session_id),
                               self.model)
        return metrics.timed(self.model, self.pool.stream(self.model, request))

    def text(self, request: ModelRequest,
             options: ResponseOptions | None = None) -> AsyncIterator[str]:
        """The text of ``stream``, for a handler that makes its own words of what the model
        said (the model's other parts are dropped)."""
        return text_only(self.stream(request, options))


@dataclass(frozen=True, slots=True)
class Question:
    """A ``response.create``: the latest user text, the latest media and the conversation."""

    text: str
    instructions: str = ""
    frame: Frame | None = None
    frames: tuple[Frame, ...] = ()
    window: Window | None = None
    history: tuple[Turn, ...] = ()
    options: ResponseOptions | None = None
    """This response's options; ``None``: the session's."""
    memory: bool = True
    """Whether the session's timeline may answer it and keep it (``False``: out of band, or
    with a context of its own)."""

    def prompt(self, default: str) -> str:
        """What to ask the model: the question's text, else ``default`` — except when the
        answer goes on from a function's output (the history ends with it): then nothing, and
        the model continues from the output."""
        if self.text:
            return self.text
        return "" if self.history and self.history[-1].role == "tool" else default


class Handler:
    """Base class of every handler. Subclasses set ``name`` and ``modality``."""

    name: ClassVar[str] = ""
    modality: ClassVar[Modality] = "image"
    default_model: ClassVar[str | None] = None
    """The model used when the config names none."""
    enabled_by_default: ClassVar[bool] = True
    """Whether the default profile turns this handler on."""
    options_model: ClassVar[type[Options] | None] = None
    """The typed ``handlers.NAME.options`` (unknown keys refused at start-up); ``None``: any
    keys (agent/options.py)."""
    feed_off_loop: ClassVar[bool] = False
    """Run ``feed`` (and ``hear``) on a worker thread (in order) when it does real work, such
    as a VAD."""
    speaks_live: ClassVar[bool] = True
    """Whether its live responses are spoken when the session answers in speech (the
    ``speech`` handler's are the user's own words: never said back)."""
    hears_on_arrival: ClassVar[bool] = False
    """Give this handler the session's audio as it is received (``hear``), not only with each
    window, so that a handler that cuts utterances ends them as soon as their silence is
    heard rather than when their window closes (up to a window later)."""
    gated: ClassVar[bool] = False
    """Whether scene-change gating is on by default: a live window whose frame shows what this
    handler last acted on is skipped (config ``handlers.NAME.gating`` overrides it)."""

    def __init__(self, ctx: HandlerContext) -> None:
        self.ctx = ctx

    def feed(self, window: Window) -> object | None:
        """Called for every window, in order. Return work for ``respond``, or ``None``."""
        return window if window.has(self.modality) else None

    def hear(self, pieces: list[tuple[Audio, float]]) -> object | None:
        """With ``hears_on_arrival``: audio just received, in order, as pieces of 16 kHz
        samples with the media time of each one's first sample (several when they came while
        the last call ran). Return work for ``respond``, or ``None``. The same audio still
        comes in the windows given to ``feed``, after it."""
        return None

    def clear_audio(self) -> None:
        """Forget buffered audio state (``input_audio_buffer.clear``); override if kept."""

    async def respond(self, work: Any) -> AsyncIterator[str | Part]:
        """Live mode: stream a response to ``work`` (text as ``str``, or answer parts), or
        yield nothing to stay silent."""
        return
        yield  # pragma: no cover

    async def answer(self, question: Question) -> AsyncIterator[str | Part]:
        """Question mode: stream this handler's part of the answer (nothing: no part). Pass
        ``question.options`` to ``ctx.stream``."""
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

    def put_back(self, item: T) -> None:
        """Return an item taken earlier; a newer one waiting wins (the older is dropped)."""
        if self._full:
            self.dropped += 1
            metrics.handler_drops.inc()
            return
        self.put(item)

    async def get(self) -> T:
        await self._ready.wait()
        self._ready.clear()
        item, self._item, self._full = self._item, None, False
        return item  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self._full)
