"""One response's lifecycle on the wire, in the order OpenAI Realtime clients expect:

``response.created``, ``response.output_item.added``, ``response.content_part.added``,
N x ``response.output_text.delta``, ``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done``, ``response.done`` (completed | cancelled | failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent import events, metrics
from agent.errors import EngineError, StreamAgentError
from agent.parts import Part, TextDelta, ToolCallDelta, Usage, as_part, total_usage

log = logging.getLogger(__name__)
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ResponseRun:
    """Streams one handler's deltas as one response. ``cancel()`` ends it as ``cancelled``."""

    def __init__(self, send: Send, metadata: dict[str, str]) -> None:
        self.send = send
        self.metadata = metadata
        self.id = events.new_id("resp")
        self.item_id = events.new_id("item")
        self.parts: list[str] = []
        self.calls: dict[int, _Call] = {}
        """The function calls of this response, by the index their parts carry."""
        self.outputs = 0
        """Output items opened so far (the message, when there is one, is the first)."""
        self.message_index: int | None = None
        self.status = "in_progress"
        self.started = False
        self.task: asyncio.Task[str] | None = None
        self.usage: list[Usage] = []
        """The usage of every model call made for this response (its ``Usage`` parts)."""
        self._cancel_requested = False
        self._running = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def cancel(self) -> None:
        """A task cancelled before it starts never runs, so it would send nothing (no
        ``response.done``) and clean nothing up: until ``run`` starts, only mark it."""
        self._cancel_requested = True
        if self.task is not None and self._running:
            self.task.cancel()

    async def run(self, deltas: AsyncIterator[str | Part], eager: bool) -> str:
        """Send the whole response; with ``eager=False`` nothing is sent unless text comes."""
        reraise, self._running = False, True
        try:
            if eager:
                await self._start()
            if self._cancel_requested:  # cancelled before it started
                raise asyncio.CancelledError
            async for item in deltas:
                await self._part(as_part(item))
            status = "completed"
        except asyncio.CancelledError:
            status = "cancelled"
            reraise = not self._cancel_requested  # cancelled from above: end, then go on up
        except StreamAgentError as exc:
            await self.send(events.error(exc))
            status = "failed"
        except Exception as exc:
            log.exception("response %s failed", self.id)
            await self.send(events.error(EngineError(f"handler failed: {exc}")))
            status = "failed"
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        if self.started:  # every response.created gets its response.done
            await self._finish(status)
        self.status = status
        metrics.responses.inc(status=status)
        if reraise:
            raise asyncio.CancelledError
        return self.text

    def _tokens(self) -> tuple[int, int]:
        """(output, input) tokens as the engines counted them; engines that count none (the
        embedded CPU models) are counted by their text deltas."""
        total = total_usage(self.usage)
        output = total.completion_tokens
        return len(self.parts) if output is None else output, total.prompt_tokens or 0

    async def _start(self, message: bool = True) -> None:
        self.started = True
        resp = events.response_object(self.id, "in_progress", self.metadata, [])
        await self.send(events.event("response.created", response=resp))
        if message:
            await self._open_message()

    async def _open_message(self) -> None:
        self.message_index, self.outputs = self.outputs, self.outputs + 1
        await self.send(
            events.event(
                "response.output_item.added",
                response_id=self.id,
                output_index=self.message_index,
                item=events.message_item(self.item_id, "", "in_progress") | {"content": []},
            )
        )
        await self.send(
            events.event(
                "response.content_part.added",
                response_id=self.id,
                item_id=self.item_id,
                output_index=self.message_index,
                content_index=0,
                part={"type": "text", "text": ""},
            )
        )

    async def _part(self, part: Part) -> None:
        if isinstance(part, TextDelta):
            if part.text:
                await self._delta(part.text)
        elif isinstance(part, Usage):
            self.usage.append(part)
        elif isinstance(part, ToolCallDelta):
            await self._call(part)
        else:
            log.warning("response %s: a %s part has no place in a text response yet; dropped",
                        self.id, type(part).__name__)

    async def _delta(self, delta: str) -> None:
        if not self.started:
            await self._start()
        elif self.message_index is None:
            await self._open_message()
        self.parts.append(delta)
        await self.send(
            events.event(
                "response.output_text.delta",
                response_id=self.id,
                item_id=self.item_id,
                output_index=self.message_index,
                content_index=0,
                delta=delta,
            )
        )

    async def _call(self, part: ToolCallDelta) -> None:
        """A function call's piece: its item opens on the first (after the message, if any);
        its arguments stream as they come; every call is closed when the response ends."""
        if not self.started:
            await self._start(message=False)
        call = self.calls.get(part.index)
        if call is None:
            call = self.calls[part.index] = _Call(
                events.new_id("item"), self.outputs, part.call_id or events.new_id("call"),
                part.name)
            self.outputs += 1
            await self.send(events.event("response.output_item.added", response_id=self.id,
                                         output_index=call.output_index,
                                         item=call.item("in_progress")))
        if part.arguments:
            call.arguments.append(part.arguments)
            await self.send(events.event(
                "response.function_call_arguments.delta", response_id=self.id,
                item_id=call.item_id, output_index=call.output_index, call_id=call.call_id,
                delta=part.arguments))

    async def _finish_calls(self, status: str) -> list[dict[str, Any]]:
        items = []
        for call in self.calls.values():
            await self.send(events.event(
                "response.function_call_arguments.done", response_id=self.id,
                item_id=call.item_id, output_index=call.output_index, call_id=call.call_id,
                name=call.name, arguments="".join(call.arguments)))
            items.append(call.item(status))
            await self.send(events.event("response.output_item.done", response_id=self.id,
                                         output_index=call.output_index, item=items[-1]))
        return items

    async def _finish(self, status: str) -> None:
        details: dict[str, Any] | None = None if status == "completed" else {"type": status}
        if status == "completed" and total_usage(self.usage).finish_reason == "length":
            status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        item_status = "completed" if status == "completed" else "incomplete"
        output = await self._finish_message(item_status) + await self._finish_calls(item_status)
        if status == "cancelled":
            # the SDKs' reasons are a closed list: a server-side stop says why in our extension
            details = ({"type": "cancelled", "reason": "client_cancelled"}
                       if self._cancel_requested else
                       {"type": "cancelled", "streamagent": {"reason": "handler_stopped"}})
        resp = events.response_object(self.id, status, self.metadata, output, details,
                                      *self._tokens())
        await self.send(events.event("response.done", response=resp))

    async def _finish_message(self, status: str) -> list[dict[str, Any]]:
        if self.message_index is None:
            return []
        text, where = self.text, {"response_id": self.id, "output_index": self.message_index}
        item = events.message_item(self.item_id, text, status)
        await self.send(
            events.event("response.output_text.done", **where, item_id=self.item_id,
                         content_index=0, text=text)
        )
        await self.send(
            events.event("response.content_part.done", **where, item_id=self.item_id,
                         content_index=0, part={"type": "text", "text": text})
        )
        await self.send(events.event("response.output_item.done", **where, item=item))
        return [item]


@dataclass(slots=True)
class _Call:
    """One function call of a response, as its parts arrive."""

    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    def item(self, status: str) -> dict[str, Any]:
        return {"id": self.item_id, "object": "realtime.item", "type": "function_call",
                "status": status, "call_id": self.call_id, "name": self.name,
                "arguments": "".join(self.arguments)}
