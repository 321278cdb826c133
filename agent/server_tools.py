"""Tools the server runs itself, offered to the model beside the client's functions.

Plugins register them (the ``register_tools`` hook); built in: ``look`` (the newest camera frame,
only when the model asks for it) and ``read_text`` (the embedded OCR on the newest frame). A
session turns them on by name (``streamagent.server_tools``). When the model calls one, the
server runs it, bounded (``TIMEOUT_S``, ``MAX_OUTPUT_CHARS``, ``MAX_ROUNDS`` of calls per
response), shows the call and its result to the client (realtime: an ``mcp_call`` item with
``server_label`` ``streamagent``), keeps both in the conversation, and the model goes on from
the result in the same response. A tool that fails or runs late is an error result the model
sees, never a failed response.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent.engine import ModelRequest, Tool, ToolCall, Turn
from agent.errors import InvalidRequest
from agent.handler import Question
from agent.media import Frame
from agent.parts import Part, ToolCallDelta, ToolOutput, text_only
from agent.pool import Pool

log = logging.getLogger(__name__)
TIMEOUT_S = 10.0
"""The longest a server tool may run; later, its result is an error."""
MAX_OUTPUT_CHARS = 4000
"""A tool's text output is cut to this (the model's context is bounded)."""
MAX_ROUNDS = 4
"""Rounds of server tool calls in one response; a model that keeps calling is stopped."""
LABEL = "streamagent"
"""The ``server_label`` of the server's own tools on the realtime wire."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a server tool may use: the model pool and the session's newest camera frame."""

    pool: Pool
    session_id: str
    newest_frame: Callable[[], Frame | None]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returns: text for the model, and optionally a frame it should see."""

    text: str
    frame: Frame | None = None


@dataclass(frozen=True)
class ServerTool:
    """A tool the server runs: its name, what it does, its arguments' JSON schema, and
    ``run(arguments, ctx)``."""

    name: str
    description: str
    run: Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}})
    label: str = LABEL
    """The ``server_label`` its calls show on the realtime wire (an MCP server's, or ours)."""

    def tool(self) -> Tool:
        return Tool(self.name, self.description, self.parameters)


async def look(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
    frame = ctx.newest_frame()
    if frame is None:
        return ToolResult("no camera frame has arrived yet")
    return ToolResult(f"the newest camera frame, at {frame.ts:.1f} s of media time, is shown "
                      "with the question", frame)


def reader(model: str = "ocr") -> Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]:
    """``read_text`` on pool model ``model`` (the embedded OCR by default)."""

    async def read_text(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        frame = ctx.newest_frame()
        if frame is None:
            return ToolResult("no camera frame has arrived yet")
        image = await asyncio.to_thread(frame.image)
        lines = [t async for t in text_only(ctx.pool.stream(
            model, ModelRequest(images=(image,), session=ctx.session_id)))]
        text = "".join(lines).strip()
        return ToolResult(text or "no text is in view")

    return read_text


BUILT_IN = (
    ServerTool("look", "Look at the camera now: the newest frame is shown to you with its "
               "time. Use it when the question is about what is in view.", look),
    ServerTool("read_text", "Read the text in view in the newest camera frame (OCR); "
               "returns the lines read, top to bottom.", reader()),
)


async def answer_with(answer: Callable[[Question], AsyncIterator[Part]], question: Question,
                      tools: Mapping[str, ServerTool], ctx: ToolContext,
                      remember: Callable[[tuple[Turn, ...]], None] | None = None,
                      ) -> AsyncIterator[Part]:
    """``answer(question)``'s parts; calls of ``tools`` are marked ``server``, run, and
    followed by their ``ToolOutput``; then the model goes on from the results (its calls are
    numbered on across rounds). ``remember`` gets each round's call and output turns."""
    base = 0
    for round_ in range(MAX_ROUNDS + 1):
        mine: dict[int, list[str]] = {}  # index -> [call_id, name, arguments...]
        top = base
        async for part in answer(question):
            if isinstance(part, ToolCallDelta):
                part = replace(part, index=base + part.index)
                top = max(top, part.index + 1)
                if part.index in mine or part.name in tools:
                    mine.setdefault(part.index, [part.call_id, part.name]).append(part.arguments)
                    label = tools[mine[part.index][1]].label
                    part = replace(part, server=True, label=label)
            yield part
        if not mine:
            return
        base = top
        calls = tuple(ToolCall(c[0], c[1], "".join(c[2:])) for c in mine.values())
        if round_ == MAX_ROUNDS:
            for index in mine:
                yield ToolOutput(index, error=f"stopped: more than {MAX_ROUNDS} rounds of "
                                 "server tool calls in one response")
            return
        turns, frame = [Turn("assistant", "", tool_calls=calls)], None
        for index, call in zip(mine, calls, strict=True):
            result, error = await _run(tools[call.name], call, ctx)
            yield ToolOutput(index, output=result.text if result else "", error=error)
            turns.append(Turn("tool", error or (result.text if result else ""),
                              call_id=call.call_id))
            if result is not None and result.frame is not None:
                frame = result.frame
        if remember is not None:
            remember(tuple(turns))
        question = _going_on(question, tuple(turns), frame)


async def _run(tool: ServerTool, call: ToolCall,
               ctx: ToolContext) -> tuple[ToolResult | None, str]:
    """Run one call within the bounds: (result, "") or (None, what went wrong)."""
    try:
        arguments = json.loads(call.arguments or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("arguments are not a JSON object")
    except ValueError as exc:
        return None, f"bad arguments for {call.name}: {exc}"
    try:
        result = await asyncio.wait_for(tool.run(arguments, ctx), TIMEOUT_S)
    except TimeoutError:
        return None, f"{call.name} took longer than {TIMEOUT_S:g} s"
    except Exception as exc:  # a plugin's tool failing is the model's news, not a crash
        log.warning("server tool %s failed: %r", call.name, exc)
        return None, f"{call.name} failed: {exc}"
    if len(result.text) > MAX_OUTPUT_CHARS:
        result = replace(result, text=result.text[:MAX_OUTPUT_CHARS] + " …(cut)")
    return result, ""


def _going_on(question: Question, turns: tuple[Turn, ...], frame: Frame | None) -> Question:
    """The question again, with the calls and their outputs after it: the model goes on from
    them (its text moves into the history; a frame a tool returned is the one it sees)."""
    asked = (Turn("user", question.text),) if question.text else ()
    going_on = replace(question, text="", history=(*question.history, *asked, *turns))
    if going_on.options is not None and going_on.options.forces_call:
        # a forced choice starts the loop, it does not hold it (else: the same call forever)
        going_on = replace(going_on, options=replace(going_on.options, tool_choice="auto"))
    if frame is not None:
        going_on = replace(going_on, frame=frame, frames=(*question.frames, frame))
    return going_on



def choose(registered: Mapping[str, ServerTool], current: dict[str, ServerTool],
           names: list[str] | None, client: tuple[Tool, ...],
           param: str) -> dict[str, ServerTool]:
    """The tools a session turns on (``names``; ``None``: ``current``), checked: each one
    registered, none named like a client function."""
    if names is None:
        chosen = current
    else:
        unknown = [n for n in names if n not in registered]
        if unknown:
            raise InvalidRequest(f"no server tool named {', '.join(map(repr, unknown))}; "
                                 f"server tools: {', '.join(sorted(registered))}", param=param)
        chosen = {n: registered[n] for n in names}
    check_names(chosen, client, param)
    return chosen


def check_names(chosen: Mapping[str, ServerTool], client: tuple[Tool, ...],
                param: str) -> None:
    """No server tool of ``chosen`` is named like a client function."""
    clash = sorted(set(chosen) & {t.name for t in client})
    if clash:
        raise InvalidRequest(f"{', '.join(clash)}: a client function and a server tool have "
                             "the same name; rename the function or turn the tool off",
                             param=param)
