"""Answer parts: what an answer is made of, from the engine to the response, in order.

An engine yields parts, the pool and the Ray hop carry them (text coalesced), a handler passes
on what it does not handle, and a response renders each in its protocol's dialect:

- ``TextDelta``: a piece of the answer's text.
- ``ToolCallDelta``: a piece of one function call (its id and name first, then its arguments).
- ``ToolOutput``: the result of a call the server ran itself.
- ``AudioChunk``: a piece of spoken answer, 16-bit mono PCM.
- ``Usage``: what a model call cost, once, at the end of its stream.

A handler may yield plain ``str`` for text; ``as_part`` turns it into a ``TextDelta``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of the ``index``-th tool call of an answer. The first piece of a call carries its
    ``call_id`` and ``name``; every piece may carry more ``arguments`` (JSON text, in pieces)."""

    index: int = 0
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    server: bool = False
    """A call of a tool the server runs itself (``agent.server_tools``); its result follows
    as a ``ToolOutput``."""
    label: str = ""
    """A server tool's ``server_label`` (its MCP server's; ``""``: the server's own)."""


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """What a server tool returned for the ``index``-th call (``error``: why it has no
    output)."""

    index: int
    output: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Spoken answer: 16-bit little-endian mono PCM at ``rate`` Hz, and the text it says."""

    pcm16: bytes
    rate: int
    transcript: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """What one model call cost, sent by an engine that counts tokens as its stream's last
    part. ``None``: not counted."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    """Prompt tokens served from the engine's cache."""
    finish_reason: str | None = None
    """``length`` when the token limit stopped generation, ``abort`` when it was cancelled,
    else ``stop`` (the model's end or a stop string; or unset)."""


Part = TextDelta | ToolCallDelta | ToolOutput | AudioChunk | Usage


def as_part(item: str | Part) -> Part:
    """Plain text is a ``TextDelta``; a part stays as it is."""
    return TextDelta(item) if isinstance(item, str) else item


async def text_only(parts: AsyncIterable[Part]) -> AsyncIterator[str]:
    """The text of a stream of parts, for a caller that wants words only (the other parts are
    dropped: use the parts themselves to pass them on)."""
    async for part in parts:
        if isinstance(part, TextDelta):
            yield part.text


def total_usage(calls: list[Usage]) -> Usage:
    """Several model calls' usage as one (a response, a profile's answer): prompt (and cached)
    tokens summed over the calls that counted them, completion tokens only if every call
    counted them, and ``length`` when any call hit its token limit."""
    prompts = [u.prompt_tokens for u in calls if u.prompt_tokens is not None]
    cached = [u.cached_tokens for u in calls if u.cached_tokens is not None]
    counted = [u.completion_tokens for u in calls if u.completion_tokens is not None]
    return Usage(
        prompt_tokens=sum(prompts) if prompts else None,
        completion_tokens=sum(counted) if calls and len(counted) == len(calls) else None,
        cached_tokens=sum(cached) if cached else None,
        finish_reason=("length" if any(u.finish_reason == "length" for u in calls)
                       else "stop" if calls else None))
