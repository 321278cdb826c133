"""The OpenAI Realtime beta dialect, for clients that still speak it (``OpenAI-Beta:
realtime=v1``, or the browser subprotocol ``openai-beta.realtime-v1``).

The session speaks GA; this module translates at the socket. Client events: ``session.update``
with ``input_audio_format`` and no ``type``, and ``text`` parts in items. Server events:
``response.text.delta`` / ``.done`` for ``response.output_text.*``, ``conversation.item.created``
for ``conversation.item.added`` (``conversation.item.done`` has no beta twin and is not sent),
``text`` content parts, ``modalities`` for ``output_modalities`` and the beta session object.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from agent.errors import InvalidRequest
from agent.protocols.common import check_containers

SUBPROTOCOL = "openai-beta.realtime-v1"
BETA_RATE = 24000
"""The beta dialect's ``pcm16``: 24 kHz mono."""
_RENAMED = {
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
_DROPPED = {"conversation.item.done"}


def requested(headers: Mapping[str, str]) -> bool:
    """Whether the client asked for the beta dialect (header or subprotocol)."""
    beta = headers.get("openai-beta", "").replace(" ", "").split(",")
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    return "realtime=v1" in beta or SUBPROTOCOL in offered


async def messages(incoming: AsyncIterator[str | bytes],
                   ) -> AsyncIterator[str | bytes | dict[str, Any]]:
    """Wrap the socket's messages: beta client events in as GA events."""
    async for message in incoming:
        yield client_event(message)


def server_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """A GA server event in the beta dialect (``None``: beta has no such event); the session's
    outbox renders every event with it."""
    kind = event.get("type", "")
    if kind in _DROPPED:
        return None
    event = {**event, "type": _RENAMED.get(kind, kind)}
    if "session" in event:
        event["session"] = _session(event["session"])
    if "response" in event:
        event["response"] = _response(event["response"])
    if "item" in event:
        event["item"] = _item(event["item"])
    if "part" in event:
        event["part"] = _part(event["part"])
    if kind == "response.function_call_arguments.done":  # beta's has no name
        event.pop("name", None)
    return event


def client_event(message: str | bytes) -> str | bytes | dict[str, Any]:
    """A beta client event as GA; anything that is not a JSON object in a text message passes
    unchanged, so the session reports it as it would any bad message."""
    if isinstance(message, bytes):
        return message
    try:
        check_containers(message)  # too many to parse: the session refuses it as usual
        event = json.loads(message)
    except (ValueError, RecursionError, InvalidRequest):  # RecursionError: nested too deep
        return message
    if not isinstance(event, dict):
        return message
    if event.get("type") == "session.update" and isinstance(event.get("session"), dict):
        event["session"] = _session_update(event["session"])
    item = event.get("item")
    if event.get("type") == "conversation.item.create" and isinstance(item, dict):
        content = item.get("content")
        if isinstance(content, list):
            item["content"] = [{**p, "type": "input_text"}
                               if isinstance(p, dict) and p.get("type") == "text" else p
                               for p in content]
    return event


def _session_update(session: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in session.items() if k not in ("input_audio_format", "modalities")}
    fmt = session.get("input_audio_format")
    if fmt is not None:  # pcm16 is 24 kHz; g711 is refused by the session as unsupported
        kind = "audio/pcm" if fmt == "pcm16" else str(fmt)
        out["audio"] = {"input": {"format": {"type": kind, "rate": BETA_RATE}}}
    return out


def _session(session: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in session.items() if k not in ("type", "audio", "output_modalities")}
    out["modalities"] = session.get("output_modalities", ["text"])
    out["input_audio_format"] = "pcm16"
    out["turn_detection"] = None
    return out


def _response(response: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in response.items() if k != "output_modalities"}
    out["modalities"] = response.get("output_modalities", ["text"])
    out["output"] = [_item(i) for i in response.get("output", [])]
    return out


def _item(item: dict[str, Any]) -> dict[str, Any]:
    if "content" not in item:  # a function call or its output
        return item
    return {**item, "content": [_part(p) for p in item["content"]]}


def _part(part: dict[str, Any]) -> dict[str, Any]:
    return {**part, "type": "text"} if part.get("type") == "output_text" else part
