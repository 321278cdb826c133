"""One response, whatever the protocol: it runs a handler's answer parts, keeps the text, the
function calls and the usage, and ends as ``completed``, ``incomplete``, ``cancelled`` or
``failed``. How it looks on the wire is its ``ResponseSink``'s business (one per protocol)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent import metrics
from agent.errors import EngineError, StreamAgentError
from agent.ids import new_id
from agent.parts import (
    AudioChunk,
    Part,
    TextDelta,
    ToolCallDelta,
    ToolOutput,
    Usage,
    as_part,
    total_usage,
)

if TYPE_CHECKING:
    from agent.voice import Speech

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Call:
    """One function call of a response, as its pieces arrive."""

    index: int
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    server: bool = False
    """A tool the server runs itself: its result comes as ``output`` or ``error``."""
    label: str = ""
    """A server tool's ``server_label`` (``""``: the server's own)."""
    output: str | None = None
    error: str = ""

    @property
    def text(self) -> str:
        return "".join(self.arguments)


class ResponseSink:
    """How a protocol shows one response. Every method is awaited in order; ``started`` comes
    before any other, and every started response gets ``finished``."""

    async def started(self, response: Response, eager: bool) -> None:
        """The response begins (``eager``: a question, whose message opens at once)."""

    async def text(self, response: Response, delta: str) -> None:
        """A piece of the answer's text."""

    async def call(self, response: Response, call: Call, part: ToolCallDelta) -> None:
        """A piece of function call ``call`` (new when ``part`` is its first)."""

    async def audio(self, response: Response, chunk: AudioChunk) -> None:
        """A piece of spoken answer."""

    async def tool_output(self, response: Response, call: Call) -> None:
        """A server tool's call ``call`` has its ``output`` (or ``error``)."""

    async def failed(self, response: Response, error: StreamAgentError) -> None:
        """What went wrong, before ``finished`` (status ``failed``)."""

    async def finished(self, response: Response) -> None:
        """The response is over: ``response.status`` and ``response.reason`` say how."""


class Response:
    """Runs one handler's (or a question's handlers') answer as one response. ``cancel()`` ends
    it as ``cancelled``."""

    def __init__(self, sink: ResponseSink, metadata: dict[str, str],
                 defer: type[StreamAgentError] | None = None, about: str = "") -> None:
        """``defer``: an error that, before anything was said, ends the response quietly as
        ``deferred`` (the caller tries again later). ``about``: what the response answers, named
        in its error if it fails (a live window)."""
        self.sink = sink
        self.defer = defer
        self.about = about
        self.metadata = metadata
        self.id = new_id("resp")
        self.texts: list[str] = []
        self.calls: dict[int, Call] = {}
        self.usage: list[Usage] = []
        """The usage of every model call made for this response (its ``Usage`` parts)."""
        self.speech: Speech | None = None
        """How it is spoken, set before it runs (``None``: in text only)."""
        self.spoken: list[str] = []
        """The transcripts of its ``AudioChunk`` parts: what was said so far."""
        self.said: list[tuple[float, str]] = []
        """Each transcript with the millisecond of audio where it starts (for truncation)."""
        self.audio_ms = 0.0
        self.item_id = new_id("item")
        """The id of its message item (the conversation's, and the wire's)."""
        self.status = "in_progress"
        self.reason: str | None = None
        """Why it is ``incomplete`` (``max_output_tokens``) or ``cancelled``
        (``client_cancelled``, ``turn_detected``, ``handler_stopped``)."""
        self.started = False
        self.task: asyncio.Task[str] | None = None
        self._cancel_requested: str | None = None  # why it was asked to stop
        self._running = False

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def transcript(self) -> str:
        return "".join(self.spoken)

    def tokens(self) -> tuple[int, int, int]:
        """(output, input, cached input) tokens as the engines counted them; engines that
        count no output (the embedded CPU models) are counted by their text deltas."""
        total = total_usage(self.usage)
        output = total.completion_tokens
        return (len(self.texts) if output is None else output, total.prompt_tokens or 0,
                total.cached_tokens or 0)

    def cancel(self, reason: str = "client_cancelled") -> None:
        """Stop it, for ``reason`` (``client_cancelled``, or ``turn_detected``: the user began
        to speak). A task cancelled before it starts never runs, so it would send nothing (no
        end) and clean nothing up: until ``run`` starts, only mark it."""
        self._cancel_requested = reason
        if self.task is not None and self._running:
            self.task.cancel()

    async def run(self, parts: AsyncIterator[str | Part], eager: bool) -> str:
        """Run the whole response; with ``eager=False`` nothing is shown unless a part comes."""
        reraise, self._running = False, True
        try:
            if eager:
                await self._start(eager)
            if self._cancel_requested:  # cancelled before it started
                raise asyncio.CancelledError
            async for item in parts:
                await self._part(as_part(item))
            status = "completed"
        except asyncio.CancelledError:
            status = "cancelled"
            reraise = not self._cancel_requested  # cancelled from above: end, then go on up
        except StreamAgentError as exc:
            if self.defer is not None and isinstance(exc, self.defer) and not self.started:
                status = "deferred"
            else:
                status = await self._failed(exc)
        except Exception as exc:
            log.exception("response %s failed", self.id)
            status = await self._failed(EngineError(f"handler failed: {exc}"))
        finally:
            aclose = getattr(parts, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        self._end(status)
        if self.started:  # every start gets its end
            await self.sink.finished(self)
        metrics.responses.inc(status=status)
        if reraise:
            raise asyncio.CancelledError
        return self.text

    async def _failed(self, error: StreamAgentError) -> str:
        if self.about:
            error = copy.copy(error)
            error.message = f"{error.message} ({self.about})"
        await self.sink.failed(self, error)
        return "failed"

    def _end(self, status: str) -> None:
        if status == "completed" and total_usage(self.usage).finish_reason == "length":
            status, self.reason = "incomplete", "max_output_tokens"
        elif status == "cancelled":
            self.reason = self._cancel_requested or "handler_stopped"
        self.status = status

    async def _start(self, eager: bool) -> None:
        self.started = True
        await self.sink.started(self, eager)

    async def _part(self, part: Part) -> None:
        if isinstance(part, Usage):
            self.usage.append(part)
            return
        if isinstance(part, TextDelta) and not part.text:
            return
        if not self.started:
            await self._start(False)
        if isinstance(part, TextDelta):
            self.texts.append(part.text)
            await self.sink.text(self, part.text)
        elif isinstance(part, ToolCallDelta):
            call = self.calls.get(part.index)
            if call is None:
                call = self.calls[part.index] = Call(
                    part.index, part.call_id or new_id("call"), part.name, server=part.server,
                    label=part.label)
            call.arguments.append(part.arguments)
            await self.sink.call(self, call, part)
        elif isinstance(part, ToolOutput):
            call = self.calls[part.index]
            call.output, call.error = part.output, part.error
            await self.sink.tool_output(self, call)
        else:
            if part.transcript:
                self.spoken.append(part.transcript)
                self.said.append((self.audio_ms, part.transcript))
            self.audio_ms += len(part.pcm16) / 2 / part.rate * 1000
            await self.sink.audio(self, part)
