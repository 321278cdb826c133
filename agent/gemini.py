"""A Gemini Live-compatible websocket (the google-genai SDK's ``client.aio.live.connect``).

It is a protocol adapter over the same ``RealtimeSession``: Gemini messages become realtime
client events, and the session's server events become Gemini messages. So the same sampler,
handlers and pool serve both. Gemini Live has no error message: a bad message closes the
socket with code 1007 and the reason, as Google's server does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from agent.audio import check_rate
from agent.errors import InvalidMedia, InvalidRequest, StreamAgentError
from agent.protocol import check_containers
from agent.runtime import Runtime
from agent.session import RealtimeSession

log = logging.getLogger(__name__)
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
PATH = "/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent"
"""Any API version: the SDK uses v1beta by default, v1 with a custom base URL."""


def pick(obj: dict[str, Any], camel: str) -> Any:
    """A field under its camelCase or snake_case name (the SDK mixes both)."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return obj.get(camel, obj.get(snake))


def parse(message: str | bytes) -> dict[str, Any]:
    """One client message (text or binary JSON) as an object, or ``InvalidRequest``."""
    check_containers(message)
    try:
        msg = json.loads(message)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
        raise InvalidRequest(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise InvalidRequest(f"a message must be a JSON object, not {type(msg).__name__}")
    return msg


def b64(data: str) -> str:
    """Standard base64 from either alphabet (the SDK sends URL-safe)."""
    data = data.replace("-", "+").replace("_", "/")
    data += "=" * (-len(data) % 4)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("media data is not base64") from None
    return data


class GeminiSession:
    def __init__(self, runtime: Runtime, ws: WebSocket, registry: set[Any] | None = None,
                 ) -> None:
        self.runtime = runtime
        self.ws = ws
        self.registry = registry if registry is not None else set()  # the gateway's sessions
        self.rate = 16000
        self.active = 0
        self.asked = 0
        """``response.create`` sent to the session whose ``response.created`` has not come back:
        a new turn interrupts them too (two quick turns would otherwise find it busy)."""
        self.closing: str | None = None

    async def run(self) -> None:
        """Count toward the session limit from before the socket is accepted (no await between
        the gateway's check and this), until it closes."""
        self.registry.add(self)
        try:
            await self.ws.accept()
            setup = await self._setup_message()
            if setup is not None:
                await self._serve(setup)
        except WebSocketDisconnect:
            pass
        finally:
            self.registry.discard(self)

    async def _setup_message(self) -> dict[str, Any] | None:
        """The ``setup`` message, within ``server.gemini_setup_timeout_s``; else close."""
        limit = self.runtime.config.server.gemini_setup_timeout_s
        try:
            async with asyncio.timeout(limit):
                message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return None
            setup = pick(parse(message.get("text") or message.get("bytes") or b""), "setup")
            if not isinstance(setup, dict):
                raise InvalidRequest("the first message must be {'setup': {...}}")
        except TimeoutError:
            await self.ws.close(CLOSE_POLICY, reason=f"no setup within {limit:g} s "
                                "(server.gemini_setup_timeout_s)")
            return None
        except InvalidRequest as exc:
            reason = f"the first message must be JSON {{'setup': {{...}}}}: {exc}"
            await self.ws.close(CLOSE_INVALID, reason=reason[:120])
            return None
        return setup

    async def _serve(self, setup: dict[str, Any]) -> None:
        model = str(setup.get("model") or "models/default").rsplit("/", 1)[-1]
        try:
            session = RealtimeSession(self.runtime, model, self._from_session, _used)
        except StreamAgentError as exc:
            await self.ws.close(CLOSE_POLICY, reason=exc.message[:120])
            return
        await self.ws.send_text(json.dumps({"setupComplete": {}}))
        await session.run(self._events(setup))
        if self.closing is not None:  # a bad message: say why as we close
            with contextlib.suppress(Exception):
                await self.ws.close(CLOSE_INVALID, reason=self.closing[:120])
        elif session.outbox.close_code is not None:  # a client that stopped reading
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(session.outbox.close_code,
                                                     reason=session.outbox.close_reason), 1)

    async def _events(self, setup: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Gemini client messages as realtime client events (objects, parsed once here)."""
        try:
            for event in self._setup(setup):
                yield event
        except (TypeError, AttributeError) as exc:
            self.closing = f"invalid setup: {exc}"
            return
        while self.closing is None:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                events = self._translate(parse(message.get("text") or message.get("bytes") or
                                               b""))
            except (KeyError, TypeError, AttributeError, InvalidRequest) as exc:
                self.closing = f"invalid message: {exc}"
                return
            for event in events:
                self.asked += event["type"] == "response.create"
                yield event
            await asyncio.sleep(0)  # let the session send what it has

    def _setup(self, setup: dict[str, Any]) -> list[dict[str, Any]]:
        session: dict[str, Any] = {"type": "realtime", "audio": {"input": {"format": {
            "type": "audio/pcm", "rate": self.rate}}}}
        system = pick(setup, "systemInstruction")
        if isinstance(system, dict):
            session["instructions"] = " ".join(p.get("text", "") for p in system.get("parts", []))
        elif isinstance(system, str):
            session["instructions"] = system
        if isinstance(setup.get("streamagent"), dict):
            session["streamagent"] = setup["streamagent"]
        return [{"type": "session.update", "session": session}]

    def _translate(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        realtime, content = pick(msg, "realtimeInput"), pick(msg, "clientContent")
        if realtime is not None:
            return self._realtime(realtime)
        if content is not None:
            out = self._interrupt()
            for turn in content.get("turns") or []:
                out += [self._item(part) for part in turn.get("parts", [])]
            if pick(content, "turnComplete"):
                out.append({"type": "response.create"})
            return out
        if pick(msg, "toolResponse") is not None:
            return []
        raise InvalidRequest(f"unknown message {sorted(msg)}; expected setup, "
                             "realtimeInput or clientContent")

    def _realtime(self, rt: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for blob in [*(pick(rt, "mediaChunks") or []), pick(rt, "audio"), pick(rt, "video")]:
            if blob:
                out += self._blob(blob)
        if rt.get("text"):
            out += [*self._interrupt(), self._item({"text": rt["text"]}),
                    {"type": "response.create"}]
        if pick(rt, "activityStart") is not None:
            out += self._interrupt()
        if pick(rt, "activityEnd") is not None or pick(rt, "audioStreamEnd"):
            out += [*self._interrupt(), {"type": "input_audio_buffer.commit"},
                    {"type": "response.create"}]
        return out

    def _blob(self, blob: dict[str, Any]) -> list[dict[str, Any]]:
        mime, data = str(pick(blob, "mimeType") or ""), b64(str(blob.get("data", "")))
        if mime.startswith("image/"):
            return [self._item({"inlineData": {"mimeType": mime, "data": data}})]
        if mime.startswith("audio/pcm"):
            out: list[dict[str, Any]] = []
            rate = _rate(mime)
            if rate != self.rate:
                self.rate = rate
                out.append({"type": "session.update", "session": {"audio": {"input": {
                    "format": {"type": "audio/pcm", "rate": rate}}}}})
            return [*out, {"type": "input_audio_buffer.append", "audio": data}]
        raise InvalidRequest(f"unsupported mimeType {mime!r}: send image/jpeg or audio/pcm")

    def _item(self, part: dict[str, Any]) -> dict[str, Any]:
        inline = pick(part, "inlineData")
        if inline is not None:
            mime = str(pick(inline, "mimeType") or "image/jpeg")
            if not mime.startswith("image/"):
                raise InvalidRequest(f"unsupported inline mimeType {mime!r}")
            content = {"type": "input_image",
                       "image_url": f"data:{mime};base64,{b64(inline['data'])}"}
        else:
            content = {"type": "input_text", "text": str(part.get("text", ""))}
        return {"type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [content]}}

    def _interrupt(self) -> list[dict[str, Any]]:
        return [{"type": "response.cancel"}] if self.active or self.asked else []

    async def _from_session(self, text: str) -> None:
        """Realtime server events as Gemini server messages."""
        if self.closing is not None:  # closed, or closing: nothing more goes out
            return
        event = json.loads(text)
        kind = event["type"]
        if kind == "response.created":
            self.active += 1
            self.asked = max(0, self.asked - 1)
        elif kind == "response.output_text.delta":
            await self.ws.send_text(json.dumps(
                {"serverContent": {"modelTurn": {"parts": [{"text": event["delta"]}]}}}))
        elif kind == "response.output_item.done" and event["item"]["type"] == "function_call":
            item = event["item"]
            call = {"id": item["call_id"], "name": item["name"], "args": _args(item["arguments"])}
            await self.ws.send_text(json.dumps({"toolCall": {"functionCalls": [call]}}))
        elif kind == "response.done":
            self.active -= 1
            status = event["response"]["status"]
            body = {"interrupted": True} if status == "cancelled" else {"turnComplete": True}
            await self.ws.send_text(json.dumps({"serverContent": body}))
        elif kind == "error" and event["error"]["code"] != "response_cancel_not_active":
            self.closing = event["error"]["message"]
            log.info("gemini session closing: %s", self.closing)
            with contextlib.suppress(Exception):
                await self.ws.close(CLOSE_INVALID, reason=self.closing[:120])


_USED = {"response.created", "response.output_text.delta", "response.output_item.done",
         "response.done", "error"}


def _used(event: dict[str, Any]) -> dict[str, Any] | None:
    """The session's events that become Gemini messages; the rest (such as the echo of every
    picture a client sends) are never serialized."""
    return event if event["type"] in _USED else None


def _args(arguments: str) -> dict[str, Any]:
    """A function call's JSON arguments as Gemini's ``args`` object (text that is not a JSON
    object, which a model may write, is kept whole under ``arguments``)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _rate(mime: str) -> int:
    """The rate of ``audio/pcm;rate=N`` (16 kHz when absent), one the session accepts."""
    params = dict(p.strip().partition("=")[::2] for p in mime.split(";")[1:])
    value = params.get("rate", "16000")
    if not (value.isascii() and value.isdigit() and len(value) <= 6):
        raise InvalidMedia(f"bad audio rate {value!r} in mimeType {mime!r}")
    return check_rate(int(value))
