"""Enforced tool choices, and an engine's stream with its tool calls as ``ToolCallDelta`` parts."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from agent.engine import ModelRequest, Tool
from agent.errors import InvalidRequest
from agent.ids import new_id
from agent.parts import Part, TextDelta, ToolCallDelta, Usage
from agent.toolcalls import ENFORCED, CallParser, _clip, _loads

log = logging.getLogger(__name__)


class _Arguments:
    """An enforced call's arguments as the engine streams them: one call, its JSON compacted
    (whitespace outside strings dropped) as it comes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []
        self.calls = 0
        self._sent: list[str] = []
        self._in_string = self._escaped = False

    def feed(self, text: str) -> list[Part]:
        compact = self._compact(text)
        if not compact:
            return []
        self._sent.append(compact)
        head: list[Part] = [] if self.calls else [ToolCallDelta(0, new_id("call"), self.name)]
        self.calls = 1
        return [*head, ToolCallDelta(0, arguments=compact)]

    def finish(self) -> list[Part]:
        arguments, problem = _loads("".join(self._sent))
        if problem or not isinstance(arguments, dict):
            self.problems.append(f"the enforced call to {self.name!r} has arguments that are "
                                 f"not a JSON object: {_clip(''.join(self._sent))}")
        return []

    def _compact(self, text: str) -> str:
        kept = []
        for c in text:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in " \t\r\n":
                continue
            kept.append(c)
        return "".join(kept)


def _parameters(tool: Tool) -> dict[str, Any]:
    """A tool's arguments schema, an object unless it says otherwise."""
    return {"type": "object", **copy.deepcopy(dict(tool.parameters))}


def forced_schema(tools: Sequence[Tool], choice: str, parallel: bool) -> dict[str, Any] | None:
    """The JSON schema that enforces ``choice``: for ``required`` an array of calls
    (``{"name", "arguments"}``, at least one, at most one unless ``parallel``), for a function's
    name its arguments (an object); ``None`` for ``auto`` and ``none``."""
    if choice in ("auto", "none"):
        return None
    if choice == "required":
        if not tools:
            raise InvalidRequest("tool_choice 'required' needs tools, and the request has none",
                                 param="tool_choice")
        calls = [{"type": "object",
                  "properties": {"name": {"const": tool.name}, "arguments": _parameters(tool)},
                  "required": ["name", "arguments"], "additionalProperties": False}
                 for tool in tools]
        schema: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
        if not parallel:
            schema["maxItems"] = 1
        return schema
    for tool in tools:
        if tool.name == choice:
            return _parameters(tool)
    names = ", ".join(repr(tool.name) for tool in tools) or "none"
    raise InvalidRequest(f"tool_choice {choice!r} is not one of the request's tools ({names}) "
                         "nor 'auto', 'none' or 'required'", param="tool_choice")


def prepare(request: ModelRequest, constrains: bool, model: str) -> ModelRequest:
    """``request`` with the ``output_schema`` its ``tool_choice`` needs; raises
    ``InvalidRequest`` for a choice that cannot be met (by ``model``, when it is enforced and
    its engine cannot constrain decoding)."""
    schema = forced_schema(request.tools, request.tool_choice, request.parallel_tool_calls)
    if schema is None:
        return request
    if not constrains:
        raise InvalidRequest(f"model {model!r} cannot enforce tool_choice "
                             f"{request.tool_choice!r} (its engine has no constrained decoding); "
                             "use 'auto'", param="tool_choice")
    return dataclasses.replace(request, output_schema=schema)


def _handler(request: ModelRequest, fmt: str | None) -> CallParser | _Arguments | None:
    """What finds the calls in this request's output, if any can be there."""
    if not request.tools or request.tool_choice == "none":
        return None
    names = [tool.name for tool in request.tools]
    if request.tool_choice == "required":
        return CallParser(ENFORCED, names, request.parallel_tool_calls)
    if request.tool_choice != "auto":
        return _Arguments(request.tool_choice)
    return CallParser(fmt, names, request.parallel_tool_calls) if fmt else None


def _ended(usage: Usage, calls: int) -> Usage:
    """``finish_reason`` ``tool_calls`` when the answer made calls (and was not cut short)."""
    if not calls or usage.finish_reason == "length":
        return usage
    return dataclasses.replace(usage, finish_reason="tool_calls")


async def tool_parts(parts: AsyncIterator[Part], request: ModelRequest,
                     fmt: str | None) -> AsyncGenerator[Part, None]:
    """An engine's stream with the calls in its text as ``ToolCallDelta`` parts (``fmt``: how
    the model writes them; see ``prepare`` for enforced choices). Other parts pass on."""
    handler = _handler(request, fmt)
    finished = handler is None
    async for part in parts:
        if finished or handler is None:
            yield part
            continue
        if isinstance(part, TextDelta):
            out = handler.feed(part.text)
        elif isinstance(part, Usage):
            out, finished = [*handler.finish(), _ended(part, handler.calls)], True
        else:
            out = [part]
        for item in out:
            yield item
    if handler is not None:
        for item in [] if finished else handler.finish():
            yield item
        for problem in handler.problems:
            log.warning("tool calls (%s): %s", request.session or "a request", problem)
