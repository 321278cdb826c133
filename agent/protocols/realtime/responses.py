"""A response on the realtime wire, in the order OpenAI Realtime clients expect:

``response.created``; the message item (``response.output_item.added``,
``response.content_part.added``, N x ``response.output_text.delta``, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``); each function call as an item
of its own (``response.output_item.added``, N x ``response.function_call_arguments.delta``,
``.done``, ``response.output_item.done``); ``response.done`` (completed | incomplete |
cancelled | failed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent.errors import StreamAgentError
from agent.ids import new_id
from agent.parts import ToolCallDelta
from agent.protocols.realtime import events
from agent.response import Call, Response, ResponseSink

Send = Callable[[dict[str, Any]], Awaitable[None]]


class RealtimeSink(ResponseSink):
    """One response's realtime events. The message item, when there is one, is output 0."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.item_id = new_id("item")
        self.message_index: int | None = None
        self.outputs = 0
        """Output items opened so far."""
        self.call_items: dict[int, tuple[str, int]] = {}
        """Each call's item id and output index, by the call's index."""

    async def started(self, response: Response, eager: bool) -> None:
        resp = events.response_object(response.id, "in_progress", response.metadata, [])
        await self.send(events.event("response.created", response=resp))
        if eager:
            await self._open_message(response)

    async def _open_message(self, response: Response) -> None:
        self.message_index, self.outputs = self.outputs, self.outputs + 1
        await self.send(events.event(
            "response.output_item.added", response_id=response.id,
            output_index=self.message_index,
            item=events.message_item(self.item_id, "", "in_progress") | {"content": []}))
        await self.send(events.event(
            "response.content_part.added", response_id=response.id, item_id=self.item_id,
            output_index=self.message_index, content_index=0, part={"type": "text", "text": ""}))

    async def text(self, response: Response, delta: str) -> None:
        if self.message_index is None:
            await self._open_message(response)
        await self.send(events.event(
            "response.output_text.delta", response_id=response.id, item_id=self.item_id,
            output_index=self.message_index, content_index=0, delta=delta))

    async def call(self, response: Response, call: Call, part: ToolCallDelta) -> None:
        """A call's item opens with its first piece; its arguments stream as they come."""
        if call.index not in self.call_items:
            self.call_items[call.index] = (new_id("item"), self.outputs)
            self.outputs += 1
            await self.send(events.event(
                "response.output_item.added", response_id=response.id,
                output_index=self.call_items[call.index][1],
                item=self._call_item(call, "in_progress", "")))
        if part.arguments:
            item_id, index = self.call_items[call.index]
            await self.send(events.event(
                "response.function_call_arguments.delta", response_id=response.id,
                item_id=item_id, output_index=index, call_id=call.call_id,
                delta=part.arguments))

    def _call_item(self, call: Call, status: str, arguments: str) -> dict[str, Any]:
        return {"id": self.call_items[call.index][0], "object": "realtime.item",
                "type": "function_call", "status": status, "call_id": call.call_id,
                "name": call.name, "arguments": arguments}

    async def failed(self, response: Response, error: StreamAgentError) -> None:
        await self.send(events.error(error))

    async def finished(self, response: Response) -> None:
        status = response.status
        item_status = "completed" if status == "completed" else "incomplete"
        output = await self._finish_message(response, item_status)
        output += await self._finish_calls(response, item_status)
        details: dict[str, Any] | None = None if status == "completed" else {"type": status}
        if status == "incomplete":
            details = {"type": status, "reason": response.reason}
        elif status == "cancelled":
            # the SDKs' reasons are a closed list: a server-side stop says why in our extension
            details = ({"type": status, "reason": response.reason}
                       if response.reason == "client_cancelled" else
                       {"type": status, "streamagent": {"reason": response.reason}})
        resp = events.response_object(response.id, status, response.metadata, output, details,
                                      *response.tokens())
        await self.send(events.event("response.done", response=resp))

    async def _finish_message(self, response: Response, status: str) -> list[dict[str, Any]]:
        if self.message_index is None:
            return []
        text, where = response.text, {"response_id": response.id,
                                      "output_index": self.message_index}
        item = events.message_item(self.item_id, text, status)
        await self.send(events.event("response.output_text.done", **where,
                                     item_id=self.item_id, content_index=0, text=text))
        await self.send(events.event("response.content_part.done", **where,
                                     item_id=self.item_id, content_index=0,
                                     part={"type": "text", "text": text}))
        await self.send(events.event("response.output_item.done", **where, item=item))
        return [item]

    async def _finish_calls(self, response: Response, status: str) -> list[dict[str, Any]]:
        items = []
        for call in response.calls.values():
            item_id, index = self.call_items[call.index]
            await self.send(events.event(
                "response.function_call_arguments.done", response_id=response.id,
                item_id=item_id, output_index=index, call_id=call.call_id, name=call.name,
                arguments=call.text))
            items.append(self._call_item(call, status, call.text))
            await self.send(events.event("response.output_item.done", response_id=response.id,
                                         output_index=index, item=items[-1]))
        return items
