"""A response on the realtime wire, in the order OpenAI Realtime clients expect:

``response.created``; the message item (``response.output_item.added``,
``response.content_part.added``, N x ``response.output_text.delta``, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``; a spoken response's message has
an ``audio`` part instead: N x (``response.output_audio.delta``, and with a sentence's first
audio ``response.output_audio_transcript.delta``), ``response.output_audio.done``,
``response.output_audio_transcript.done``); each function call as an item of its own
(``response.output_item.added``, N x ``response.function_call_arguments.delta``, ``.done``,
``response.output_item.done``); ``response.done`` (completed | incomplete | cancelled |
failed).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

from agent.errors import StreamAgentError
from agent.ids import new_id
from agent.parts import AudioChunk, ToolCallDelta
from agent.protocols.realtime import events
from agent.protocols.realtime.speech import encode
from agent.response import Call, Response, ResponseSink
from agent.server_tools import LABEL

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
        self.item_id = response.item_id  # the conversation knows its message by this id
        resp = events.response_object(response.id, "in_progress", response.metadata, [],
                                      spoken=response.speech is not None)
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
            output_index=self.message_index, content_index=0,
            part=({"type": "audio", "transcript": ""} if response.speech is not None
                  else {"type": "text", "text": ""})))

    async def text(self, response: Response, delta: str) -> None:
        if response.speech is not None:  # spoken: the words go out with their audio
            return
        if self.message_index is None:
            await self._open_message(response)
        await self.send(events.event(
            "response.output_text.delta", response_id=response.id, item_id=self.item_id,
            output_index=self.message_index, content_index=0, delta=delta))

    async def audio(self, response: Response, chunk: AudioChunk) -> None:
        """A piece of speech, and with a sentence's first piece its words."""
        if response.speech is None:  # a model's own speech, in a response asked in text
            return
        if self.message_index is None:
            await self._open_message(response)
        where = {"response_id": response.id, "item_id": self.item_id,
                 "output_index": self.message_index, "content_index": 0}
        if chunk.pcm16:
            data = encode(chunk.pcm16, response.speech.encoding)
            await self.send(events.event("response.output_audio.delta", **where,
                                         delta=base64.b64encode(data).decode()))
        if chunk.transcript:
            await self.send(events.event("response.output_audio_transcript.delta", **where,
                                         delta=chunk.transcript))

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
            if call.server:
                await self.send(events.event(
                    "response.mcp_call_arguments.delta", response_id=response.id,
                    item_id=item_id, output_index=index, delta=part.arguments))
                return
            await self.send(events.event(
                "response.function_call_arguments.delta", response_id=response.id,
                item_id=item_id, output_index=index, call_id=call.call_id,
                delta=part.arguments))

    async def tool_output(self, response: Response, call: Call) -> None:
        """A server tool's call ends: its arguments, then it ran, then its item with the
        output (or the error)."""
        item_id, index = self.call_items[call.index]
        where = {"item_id": item_id, "output_index": index}
        await self.send(events.event("response.mcp_call_arguments.done",
                                     response_id=response.id, **where, arguments=call.text))
        await self.send(events.event("response.mcp_call.in_progress", **where))
        await self.send(events.event(
            "response.mcp_call.failed" if call.error else "response.mcp_call.completed",
            **where))
        await self.send(events.event("response.output_item.done", response_id=response.id,
                                     output_index=index, item=self._call_item(
                                         call, "completed", call.text)))

    def _call_item(self, call: Call, status: str, arguments: str) -> dict[str, Any]:
        if call.server:  # as OpenAI shows a tool its server ran: an MCP call
            item: dict[str, Any] = {
                "id": self.call_items[call.index][0],  # the GA mcp_call has no object
                "type": "mcp_call", "server_label": call.label or LABEL, "name": call.name,
                "arguments": arguments, "output": call.output}
            if call.error:
                item["error"] = {"type": "tool_execution_error", "message": call.error}
            return item
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
                       if response.reason in ("client_cancelled", "turn_detected") else
                       {"type": status, "streamagent": {"reason": response.reason}})
        resp = events.response_object(response.id, status, response.metadata, output, details,
                                      *response.tokens(), spoken=response.speech is not None)
        await self.send(events.event("response.done", response=resp))

    async def _finish_message(self, response: Response, status: str) -> list[dict[str, Any]]:
        if self.message_index is None:
            return []
        if response.speech is not None:
            return await self._finish_speech(response, status)
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

    async def _finish_speech(self, response: Response, status: str) -> list[dict[str, Any]]:
        """The audio part ends with what was said (a cancelled response: what was said before
        it stopped)."""
        said = response.transcript
        where = {"response_id": response.id, "output_index": self.message_index,
                 "item_id": self.item_id, "content_index": 0}
        item = events.message_item(self.item_id, said, status, spoken=True)
        await self.send(events.event("response.output_audio.done", **where))
        await self.send(events.event("response.output_audio_transcript.done", **where,
                                     transcript=said))
        await self.send(events.event("response.content_part.done", **where,
                                     part={"type": "audio", "transcript": said}))
        await self.send(events.event("response.output_item.done",
                                     response_id=response.id, output_index=self.message_index,
                                     item=item))
        return [item]

    async def _finish_calls(self, response: Response, status: str) -> list[dict[str, Any]]:
        items = []
        for call in response.calls.values():
            if call.server:  # ended with its output
                items.append(self._call_item(call, "completed", call.text))
                continue
            item_id, index = self.call_items[call.index]
            await self.send(events.event(
                "response.function_call_arguments.done", response_id=response.id,
                item_id=item_id, output_index=index, call_id=call.call_id, name=call.name,
                arguments=call.text))
            # a call written whole is complete, even if the token limit cut what came after
            items.append(self._call_item(call, "completed" if whole(call.text) else status,
                                         call.text))
            await self.send(events.event("response.output_item.done", response_id=response.id,
                                         output_index=index, item=items[-1]))
        return items


def whole(arguments: str) -> bool:
    """Whether a call's arguments are a whole JSON object (not cut by the token limit)."""
    try:
        return isinstance(json.loads(arguments), dict)
    except ValueError:
        return False
