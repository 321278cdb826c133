"""One OpenAI Realtime session per websocket: client events become conversation commands, and
the conversation's responses become server events.

The only place that maps errors to this wire. Per-message problems become ``error`` events and
the session goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from agent.conversation import UNCHANGED, Ask, Content, Conversation, Image, Settings, Sound
from agent.engine import ToolCall, Turn
from agent.errors import HandlerFailed, InvalidMedia, InvalidRequest, StreamAgentError
from agent.ids import new_id
from agent.intake import Intake
from agent.mcp import McpClients
from agent.protocols.common import extension
from agent.protocols.context_window import truncation_object, window
from agent.protocols.jsontext import echoed, plain
from agent.protocols.outbox import Outbox, Render, serve
from agent.protocols.realtime import events, mcp, wire
from agent.protocols.realtime.hearing import HeardEvents, hearing, input_object
from agent.protocols.realtime.responses import RealtimeSink
from agent.protocols.realtime.speech import (
    listening_speaks,
    modalities,
    output_object,
    speech_change,
    spoken,
)
from agent.protocols.realtime.tools import choice_object, tool_choice, tools
from agent.runtime import Runtime

log = logging.getLogger(__name__)
SendText = Callable[[str], Awaitable[None]]
Message = str | bytes | dict[str, Any]
"""A client message: JSON text, or an object a dialect has parsed (and bounded) already."""


def token_cap(value: int | str) -> int | None:
    """``max_output_tokens``: a positive number, or ``"inf"`` for the model's own limit."""
    return None if value == "inf" else int(value)


class RealtimeSession:
    def __init__(self, runtime: Runtime, model: str, send_text: SendText,
                 render: Render | None = None) -> None:
        """``render``: a dialect's form of each server event (``None``: not sent)."""
        server = runtime.config.server
        self.conversation = Conversation(runtime, model, lambda: RealtimeSink(self.send),
                                         HeardEvents(self.send))
        self.id = self.conversation.id
        self.model = model
        self.runtime = runtime
        self.send_text = send_text
        self.outbox = Outbox(self.id, server.slow_client_timeout_s, server.max_outbox_bytes,
                             render)
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.mcp = McpClients(server)
        self.mcp_entries: list[dict[str, Any]] = []
        """The session's MCP tools as ``session.updated`` shows them (no headers)."""
        self.chose_modalities = False
        """The client has set ``output_modalities`` (then turn detection leaves them be)."""
        self.echo_media = True
        """Item echoes show media data as sent (``streamagent.echo_media``)."""

    async def send(self, event: dict[str, Any]) -> None:
        self._remember(event)
        await self.outbox.put(event)

    def _remember(self, event: dict[str, Any]) -> None:
        """Keep the conversation's items as last sent (``conversation.item.retrieve``): the
        newest ``max_history``."""
        kind = event["type"]
        if kind in ("conversation.item.done", "response.output_item.done"):
            item = event["item"]
            self.items[item["id"]] = item
            self.items.move_to_end(item["id"])
            while len(self.items) > self.conversation.history.maxlen:  # type: ignore[operator]
                self.items.popitem(last=False)
        elif kind == "conversation.item.input_audio_transcription.completed":
            item = self.items.get(event["item_id"])
            if item is not None:
                item["content"] = [{"type": "input_audio", "transcript": event["transcript"]}]

    async def run(self, messages: AsyncIterator[Message]) -> None:
        """Serve until the client goes away, the writer dies or the client stops reading."""
        try:
            await serve(self.conversation, self.outbox, self.send_text, self._read(messages))
        finally:
            await self.mcp.close()

    async def _read(self, messages: AsyncIterator[Message]) -> None:
        failed = None
        try:
            self.conversation.start()
        except HandlerFailed as exc:  # the session goes on with the handlers that started
            failed = exc
        await self.send(events.event("session.created", session=self._session_object()))
        if failed is not None:
            await self.send(events.error(failed))
        async for message in messages:  # a socket can hold thousands of small messages that
            await self.handle(message)  # arrive without a wait: let the other tasks run
            await asyncio.sleep(0)

    async def handle(self, message: Message) -> None:
        event_id = None
        try:
            if isinstance(message, bytes):
                raise InvalidRequest("binary messages are not supported: send JSON text")
            event = wire.parse_event(message)
            event_id = event.event_id
            await self.dispatch(event, isinstance(message, str) and plain(message))
        except StreamAgentError as exc:
            await self.send(events.error(exc, event_id))
        except Exception as exc:  # a bug: say so, and keep the session
            log.exception("session %s: event %s failed", self.id, event_id)
            await self.send(events.error(StreamAgentError(f"internal error: {exc!r}"), event_id))

    async def dispatch(self, event: wire.ClientEvent, from_plain: bool = False) -> None:
        """``from_plain``: the event's strings need no escaping (``jsontext.plain``)."""
        conv = self.conversation
        if isinstance(event, wire.SessionUpdate):
            change, offered = settings(event.session), event.session.tools
            self.chose_modalities |= event.session.output_modalities is not None
            ext = event.session.streamagent
            if ext is not None and ext.echo_media is not None:
                self.echo_media = ext.echo_media
            if not self.chose_modalities:
                change = replace(change, speech=listening_speaks(
                    event.session, change.speech, conv.speech is not None))
            if offered is not None:
                found = mcp.servers(offered, "session.tools")
                change = replace(change, mcp_tools=await mcp.offer(
                    self.mcp, found, self.send, "session.tools"))
                self.mcp_entries = mcp.entries(offered)
            conv.configure(change)
            await self.send(events.event("session.updated", session=self._session_object()))
        elif isinstance(event, wire.AudioAppend):
            conv.add_audio(event.audio, event.streamagent.timestamp if event.streamagent else None)
        elif isinstance(event, wire.AudioCommit):
            item_id = conv.commit_audio() or new_id("item")
            await self.send(events.event("input_audio_buffer.committed",
                                         item_id=item_id, previous_item_id=None))
        elif isinstance(event, wire.AudioClear):
            conv.clear_audio()
            await self.send(events.event("input_audio_buffer.cleared"))
        elif isinstance(event, wire.ItemCreate):
            await self._add_item(event, from_plain)
        elif isinstance(event, wire.ItemDelete):
            if not conv.forget(event.item_id) and self.items.pop(event.item_id, None) is None:
                raise InvalidRequest(f"no item {event.item_id!r} in the conversation",
                                     param="item_id")
            self.items.pop(event.item_id, None)
            await self.send(events.event("conversation.item.deleted", item_id=event.item_id))
        elif isinstance(event, wire.ItemRetrieve):
            item = self.items.get(event.item_id)
            if item is None:
                raise InvalidRequest(f"no item {event.item_id!r} in the conversation",
                                     param="item_id")
            await self.send(events.event("conversation.item.retrieved", item=item))
        elif isinstance(event, wire.ItemTruncate):
            conv.truncate(event.item_id, event.audio_end_ms)
            await self.send(events.event("conversation.item.truncated", item_id=event.item_id,
                                         content_index=event.content_index,
                                         audio_end_ms=event.audio_end_ms))
        elif isinstance(event, wire.ResponseCreate):
            conv.ask(ask(event.response, conv.intake))
        elif isinstance(event, wire.ResponseCancel):
            conv.cancel(event.response_id)

    def _session_object(self) -> dict[str, Any]:
        conv, runtime = self.conversation, self.runtime
        media = conv.media
        return events.session_object(self.id, self.model, {
            "instructions": conv.instructions,
            "output_modalities": modalities(conv.speech),
            "max_output_tokens": conv.options.response.max_new_tokens or "inf",
            "tools": [{"type": "function", "name": t.name, "description": t.description,
                       "parameters": dict(t.parameters)} for t in conv.options.response.tools]
            + self.mcp_entries,
            "tool_choice": choice_object(conv.options.response.tool_choice),
            "truncation": truncation_object(conv.options.memory.window),
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": conv.audio_rate},
                                **input_object(conv.transcriber)},
                      **output_object(conv.speech)},
            "streamagent": {
                "live": media.live,
                "sample_fps": 1.0 / media.sampler.window_s,
                "handlers": media.handler_names,
                "video_window_s": media.video_window_s,
                "available_handlers": runtime.usable_handlers(conv.profile),
                "models": {h: runtime.model_for(h, conv.profile) for h in media.handler_names},
                "lora": conv.options.response.lora,
                "memory": conv.options.memory.on,
                "server_tools": list(conv.server_tools),
                "available_server_tools": sorted(runtime.registry.tools),
                "watches": [w.as_dict() for w in conv.watches.watches],
                "echo_media": self.echo_media,
            },
        })

    async def _add_item(self, event: wire.ItemCreate, from_plain: bool) -> None:
        item, conv = event.item, self.conversation
        item_id = item.id or new_id("item")
        out: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": item.type,
                               "status": "completed"}
        if isinstance(item, wire.FunctionCallOutputItem):
            conv.add_call_output(item.call_id, item.output, item_id)
            out |= {"call_id": item.call_id, "output": item.output}
        elif isinstance(item, wire.FunctionCallItem):
            call = ToolCall(item.call_id or new_id("call"), item.name, item.arguments)
            conv.add_call(call, item_id)
            out |= {"call_id": call.call_id, "name": call.name, "arguments": call.arguments}
        else:
            conv.add_message(item.role, [c for c in map(content, item.content) if c is not None],
                             item_id)
            out |= {"role": item.role,
                    "content": [echo(p, from_plain, self.echo_media) for p in item.content]}
        prev = event.previous_item_id
        await self.send(events.event("conversation.item.added", previous_item_id=prev, item=out))
        await self.send(events.event("conversation.item.done", previous_item_id=prev, item=out))


def settings(params: wire.SessionParams) -> Settings:
    """A ``session.update`` as a conversation settings change (the audio format checked)."""
    fmt = params.audio.input.format if params.audio and params.audio.input else None
    if fmt is not None and fmt.type not in ("audio/pcm", "pcm16"):
        raise InvalidMedia(f"unsupported audio format {fmt.type!r}; use audio/pcm",
                           param="session.audio.input.format.type")
    cap = (UNCHANGED if params.max_output_tokens is None
           else token_cap(params.max_output_tokens))
    return extension(params.streamagent, Settings(
        instructions=params.instructions, audio_rate=fmt.rate if fmt is not None else None,
        max_output_tokens=cap, tools=tools(params.tools, "session.tools"),
        tool_choice=tool_choice(params.tool_choice),
        parallel_tool_calls=params.parallel_tool_calls, speech=speech_change(params),
        window=window(params.truncation),
        **hearing(params.audio.input if params.audio else None)))


def content(part: wire.InputText | wire.InputImage | wire.InputAudio) -> Content | None:
    if isinstance(part, wire.InputText):
        return part.text
    if isinstance(part, wire.InputImage):
        return Image(part.image_url, part.streamagent.timestamp if part.streamagent else None)
    return Sound(part.audio) if part.audio is not None else None  # a transcript alone: kept


def echo(part: wire.InputText | wire.InputImage | wire.InputAudio,
         from_plain: bool, media: bool = True) -> dict[str, Any]:
    """A content part as the item's echo shows it; its data URL or audio, sent back as it
    came, is not scanned again for JSON escapes. ``media`` off: without them."""
    out = part.model_dump(exclude_none=True, exclude=None if media else {"image_url", "audio"})
    for key in ("image_url", "audio", "text"):
        if key in out:
            out[key] = echoed(out[key], from_plain)
    return out


def ask(params: wire.ResponseParams | None, intake: Intake) -> Ask:
    """A ``response.create`` as a question (``response.input``: its own context)."""
    if params is None:
        return Ask()
    if params.audio is not None:
        raise InvalidRequest("a voice or audio format for one response is not served: set "
                             "them in session.audio.output", param="response.audio")
    return Ask(instructions=params.instructions or None, metadata=params.metadata,
               remember=params.conversation != "none",
               context=None if params.input is None else own_context(params.input, intake),
               max_output_tokens=(token_cap(params.max_output_tokens)
                                  if params.max_output_tokens else None),
               tools=tools(params.tools, "response.tools"),
               tool_choice=tool_choice(params.tool_choice),
               parallel_tool_calls=params.parallel_tool_calls,
               speak=spoken(params.output_modalities))


def own_context(items: list[wire.AnyItem], intake: Intake) -> tuple[Turn, ...]:
    """``response.input``: text messages and function calls with their outputs; the
    session's media stay what the handlers see."""
    turns: list[Turn] = []
    for item in items:
        if isinstance(item, wire.FunctionCallOutputItem):
            intake.text(item.output, 0, param="response.input")
            turns.append(Turn("tool", item.output, call_id=item.call_id))
            continue
        if isinstance(item, wire.FunctionCallItem):
            intake.text(item.arguments, 0, param="response.input")
            turns.append(Turn("assistant", "", tool_calls=(
                ToolCall(item.call_id or new_id("call"), item.name, item.arguments),)))
            continue
        parts = [p for p in item.content if isinstance(p, wire.InputText)]
        text = "".join(p.text for p in parts)
        if len(parts) < len(item.content):
            raise InvalidRequest("response.input takes message items with input_text parts "
                                 "only; send media with conversation.item.create",
                                 param="response.input")
        intake.text(text, sum(len(t.text) for t in turns if t.role != "system"),
                    param="response.input")
        turns.append(Turn(item.role, text))
    return tuple(turns)
