"""A question's answer from a set of handlers, the same on every protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from agent.handler import Handler, Question
from agent.parts import Part, TextDelta, ToolCallDelta, Usage, as_part

NOTHING = "I have nothing to report yet."


def response_metadata(handler: str, modality: str, span: Any) -> dict[str, str]:
    """``response.metadata``: the handler, the modality and the window in ms of media time."""
    meta = {"handler": handler, "modality": modality}
    if span is not None and hasattr(span, "start") and hasattr(span, "end"):
        meta["window_start_ms"] = str(round(span.start * 1000))
        meta["window_end_ms"] = str(round(span.end * 1000))
    return meta


async def answers(handlers: list[Handler], question: Question,
                  settled: Callable[[], Awaitable[None]] | None = None,
                  ) -> AsyncIterator[Part]:
    """Each handler's part of the answer, one after the other, separated by new lines;
    ``settled`` first waits until every handler has seen the media sent so far. Usage is
    passed on and says nothing."""
    if settled is not None:
        await settled()
    said, calls = False, 0
    for handler in handlers:
        first, base = True, calls
        async for item in handler.answer(question):
            part = as_part(item)
            if isinstance(part, ToolCallDelta):  # numbered across the handlers' answers
                part = replace(part, index=base + part.index)
                calls = max(calls, part.index + 1)
                said = True
            elif not isinstance(part, Usage):
                if first and said:
                    yield TextDelta("\n")
                first, said = False, True
            yield part
    if not said:
        yield TextDelta(NOTHING)
