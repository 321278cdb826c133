"""A question's answer from a set of handlers, the same on every protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agent.handler import Handler, Question

NOTHING = "I have nothing to report yet."


def token_cap(value: int | str) -> int | None:
    """``max_output_tokens``: a positive number, or ``"inf"`` for the model's own limit."""
    return None if value == "inf" else int(value)


def response_metadata(handler: str, modality: str, span: Any) -> dict[str, str]:
    """``response.metadata``: the handler, the modality and the window in ms of media time."""
    meta = {"handler": handler, "modality": modality}
    if span is not None and hasattr(span, "start") and hasattr(span, "end"):
        meta["window_start_ms"] = str(round(span.start * 1000))
        meta["window_end_ms"] = str(round(span.end * 1000))
    return meta


async def answers(handlers: list[Handler], question: Question,
                  settled: Callable[[], Awaitable[None]] | None = None,
                  ) -> AsyncIterator[str]:
    """Each handler's part of the answer, one after the other, separated by new lines;
    ``settled`` first waits until every handler has seen the media sent so far."""
    if settled is not None:
        await settled()
    said = False
    for handler in handlers:
        first = True
        async for delta in handler.answer(question):
            if first and said:
                yield "\n"
            first, said = False, True
            yield delta
    if not said:
        yield NOTHING
