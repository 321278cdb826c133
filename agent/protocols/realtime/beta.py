"""The OpenAI Realtime beta dialect, for clients that still speak it (``OpenAI-Beta:
realtime=v1``, or the browser subprotocol ``openai-beta.realtime-v1``).

The session speaks GA; this module translates at the socket. Client events: ``session.update``
with ``input_audio_format`` and no ``type``, and ``text`` parts in items. Server events:
``response.text.delta`` / ``.done`` for ``response.output_text.*``, ``conversation.item.created``
for ``conversation.item.added`` (``conversation.item.done`` has no beta twin and is not sent),
``text`` content parts, ``modalities`` for ``output_modalities`` and the beta session object.
Speech: ``modalities``, ``output_audio_format``, ``voice`` and ``speed`` in, and
``response.audio.*`` / ``response.audio_transcript.*`` for ``response.output_audio.*`` /
``response.output_audio_transcript.*`` out, with ``audio`` content parts.
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
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
}
_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
"""Beta's audio formats as GA's (and back)."""
_BETA_FORMATS = {ga: beta for beta, ga in _FORMATS.items()}
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
    if kind in _DROPPED or kind.startswith("response.mcp_call") or \
            event.get("item", {}).get("type") == "mcp_call":
        return None  # beta has no MCP items: the server's own tools run unseen
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
    response = event.get("response")
    if event.get("type") == "response.create" and isinstance(response, dict) \
            and "modalities" in response:
        response["output_modalities"] = response.pop("modalities")
    item = event.get("item")
    if event.get("type") == "conversation.item.create" and isinstance(item, dict):
        content = item.get("content")
        if isinstance(content, list):
            item["content"] = [{**p, "type": "input_text"}
                               if isinstance(p, dict) and p.get("type") == "text" else p
                               for p in content]
    return event


def _session_update(session: dict[str, Any]) -> dict[str, Any]:
    moved = ("input_audio_format", "output_audio_format", "modalities", "voice", "speed",
             "input_audio_transcription", "turn_detection")
    out = {k: v for k, v in session.items() if k not in moved}
    audio: dict[str, Any] = {}
    fmt = session.get("input_audio_format")
    heard = {k: session[v] for k, v in (("transcription", "input_audio_transcription"),
                                        ("turn_detection", "turn_detection")) if v in session}
    if fmt is not None:  # pcm16 is 24 kHz; g711 is refused by the session as unsupported
        kind = "audio/pcm" if fmt == "pcm16" else str(fmt)
        heard["format"] = {"type": kind, "rate": BETA_RATE}
    if heard:
        audio["input"] = heard
    output: dict[str, Any] = {k: session[k] for k in ("voice", "speed") if k in session}
    if (fmt := session.get("output_audio_format")) is not None:
        output["format"] = {"type": _FORMATS.get(str(fmt), str(fmt)), "rate": BETA_RATE}
    if output:
        audio["output"] = output
    if audio:
        out["audio"] = audio
    if "modalities" in session:
        out["output_modalities"] = session["modalities"]
    return out


def _session(session: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in session.items() if k not in ("type", "audio", "output_modalities")}
    out["modalities"] = _modalities(session)
    out["input_audio_format"] = "pcm16"
    output = session.get("audio", {}).get("output")
    if output is not None:
        out["output_audio_format"] = _BETA_FORMATS[output["format"]["type"]]
        out["voice"], out["speed"] = output["voice"], output["speed"]
    heard = session.get("audio", {}).get("input", {})
    out["turn_detection"] = heard.get("turn_detection")
    out["input_audio_transcription"] = heard.get("transcription")
    return out


def _response(response: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in response.items() if k != "output_modalities"}
    out["modalities"] = _modalities(response)
    out["output"] = [_item(i) for i in response.get("output", []) if i.get("type") != "mcp_call"]
    return out


def _item(item: dict[str, Any]) -> dict[str, Any]:
    if "content" not in item:  # a function call or its output
        return item
    return {**item, "content": [_part(p) for p in item["content"]]}


def _modalities(obj: dict[str, Any]) -> list[str]:
    """Beta's ``modalities``: speech always comes with its text (``["text", "audio"]``)."""
    return ["text", "audio"] if "audio" in obj.get("output_modalities", ["text"]) else ["text"]


def _part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "output_text":
        return {**part, "type": "text"}
    return {**part, "type": "audio"} if kind == "output_audio" else part
