"""A question's answer from a set of handlers, the same on every protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from agent import protocol
from agent.engine import Turn
from agent.errors import InvalidRequest
from agent.handler import Handler, Question
from agent.intake import Intake
from agent.parts import Part, TextDelta, Usage, as_part

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


def own_context(question: Question, items: list[protocol.Item], intake: Intake) -> Question:
    """``response.input``: these messages, not the conversation, are the question's context
    (the last user text is the question, earlier messages its history, system text its
    instructions); the session's media stay what the handlers see."""
    turns: list[Turn] = []
    instructions = question.instructions
    for item in items:
        parts = [p for p in item.content if isinstance(p, protocol.InputText)]
        text = "".join(p.text for p in parts)
        if len(parts) < len(item.content):
            raise InvalidRequest("response.input takes message items with input_text parts "
                                 "only; send media with conversation.item.create",
                                 param="response.input")
        intake.text(text, sum(len(t.text) for t in turns), param="response.input")
        if item.role == "system":
            instructions = text
        else:
            turns.append(Turn(item.role, text))
    last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=None)
    if last_user is None:
        return replace(question, text="", instructions=instructions, history=tuple(turns))
    return replace(question, text=turns[last_user].text, instructions=instructions,
                   history=tuple(turns[:last_user] + turns[last_user + 1:]))


async def answers(handlers: list[Handler], question: Question,
                  settled: Callable[[], Awaitable[None]] | None = None,
                  ) -> AsyncIterator[Part]:
    """Each handler's part of the answer, one after the other, separated by new lines;
    ``settled`` first waits until every handler has seen the media sent so far. Usage is
    passed on and says nothing."""
    if settled is not None:
        await settled()
    said = False
    for handler in handlers:
        first = True
        async for item in handler.answer(question):
            part = as_part(item)
            if not isinstance(part, Usage):
                if first and said:
                    yield TextDelta("\n")
                first, said = False, True
            yield part
    if not said:
        yield TextDelta(NOTHING)
