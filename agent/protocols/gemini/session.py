"""A Gemini Live-compatible websocket (the google-genai SDK's ``client.aio.live.connect``).

It is a protocol adapter over the same conversation core as the realtime socket: Gemini
messages become conversation commands, and responses become Gemini messages (``GeminiSink``).
So the same sampler, handlers and pool serve both. Gemini Live has no error message: a bad
message closes the socket with code 1007 and the reason, as Google's server does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from typing import Any

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from agent.audio import check_rate
from agent.conversation import Ask, Content, Conversation, Image, Settings
from agent.engine import Tool
from agent.errors import InvalidMedia, InvalidRequest, StreamAgentError
from agent.parts import AudioChunk
from agent.protocols.common import StreamagentSession, check_containers, extension
from agent.protocols.context_window import compression
from agent.protocols.gemini.speech import (
    activity_detection,
    audio_messages,
    speech_change,
    transcribed,
)
from agent.protocols.outbox import Outbox, serve
from agent.response import Response, ResponseSink
from agent.runtime import Runtime
from agent.transcripts import DEFAULT_TRANSCRIBER, Heard, Listener

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
        self.closing: str | None = None
        self.pending_calls: set[str] = set()
        """Function calls sent and not answered yet (cancelled if the user speaks first)."""
        self.transcribe = False
        self.hear_words = False
        """Whether the client asked for its own words (``inputAudioTranscription``)."""
        """Whether spoken answers come with their words (``outputAudioTranscription``)."""
        server = runtime.config.server
        self.outbox = Outbox("gemini", server.slow_client_timeout_s, server.max_outbox_bytes)

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
            conv = Conversation(self.runtime, model, lambda: GeminiSink(self),
                                GeminiHeard(self))
        except StreamAgentError as exc:
            await self.ws.close(CLOSE_POLICY, reason=exc.message[:120])
            return
        self.outbox.session_id = conv.id
        await self.ws.send_text(json.dumps({"setupComplete": {}}))
        await serve(conv, self.outbox, self.ws.send_text, self._read(conv, setup))
        if self.closing is not None:  # a bad message: say why as we close
            with contextlib.suppress(Exception):
                await self.ws.close(CLOSE_INVALID, reason=self.closing[:120])
        elif self.outbox.close_code is not None:  # a client that stopped reading
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(self.outbox.close_code,
                                                     reason=self.outbox.close_reason), 1)

    async def send(self, message: dict[str, Any]) -> None:
        if self.closing is None:  # closing: nothing more goes out
            await self.outbox.put(message)

    async def close_with(self, reason: str) -> None:
        """Close with 1007 and ``reason`` once what was sent before has gone out."""
        if self.closing is None:
            self.closing = reason
            log.info("gemini session closing: %s", reason)
            self.outbox.end()

    async def _read(self, conv: Conversation, setup: dict[str, Any]) -> None:
        """Gemini client messages as conversation commands, until the client goes or a bad
        message closes the socket (after what was sent before it)."""
        try:
            conv.start()
            conv.configure(self._setup(setup), where="setup")
        except (TypeError, AttributeError) as exc:
            await self.close_with(f"invalid setup: {exc}")
        except StreamAgentError as exc:
            await self.close_with(exc.message)
        while self.closing is None:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                await self._apply(conv, parse(message.get("text") or message.get("bytes") or b""))
            except (KeyError, TypeError, AttributeError) as exc:
                await self.close_with(f"invalid message: {exc}")
            except InvalidRequest as exc:
                await self.close_with(f"invalid message: {exc.message}")
            except StreamAgentError as exc:
                await self.close_with(exc.message)
            await asyncio.sleep(0)  # let the session send what it has
        await self.outbox.ended.wait()

    def _setup(self, setup: dict[str, Any]) -> Settings:
        system = pick(setup, "systemInstruction")
        instructions = None
        if isinstance(system, dict):
            instructions = " ".join(p.get("text", "") for p in system.get("parts", []))
        elif isinstance(system, str):
            instructions = system
        ext = setup.get("streamagent")
        try:
            checked = StreamagentSession.model_validate(ext) if isinstance(ext, dict) else None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"]))
            raise InvalidRequest(f"setup.streamagent.{where}: {first['msg']}") from None
        tools = gemini_tools(setup.get("tools"))
        self.transcribe = transcribed(setup)
        self.hear_words = pick(setup, "inputAudioTranscription") is not None
        return extension(checked, Settings(
            instructions=instructions, audio_rate=self.rate, tools=tools,
            tool_choice=gemini_choice(pick(setup, "toolConfig"), tools),
            speech=speech_change(setup),
            window=compression(pick(setup, "contextWindowCompression")),
            transcription=DEFAULT_TRANSCRIBER if pick(setup, "inputAudioTranscription")
            is not None else None, vad=activity_detection(setup)))

    async def _apply(self, conv: Conversation, msg: dict[str, Any]) -> None:
        realtime, content = pick(msg, "realtimeInput"), pick(msg, "clientContent")
        if realtime is not None:
            await self._realtime(conv, realtime)
        elif content is not None:
            await self._interrupt(conv)
            for turn in content.get("turns") or []:
                for part in turn.get("parts", []):
                    conv.add_message("user", [self._content(part)])
            if pick(content, "turnComplete"):
                conv.ask(Ask())
        elif (response := pick(msg, "toolResponse")) is not None:
            self._tool_response(conv, response)
        else:
            raise InvalidRequest(f"unknown message {sorted(msg)}; expected setup, "
                                 "realtimeInput, clientContent or toolResponse")

    async def _interrupt(self, conv: Conversation) -> None:
        """New user activity cancels what is being answered (a live response too), and the
        function calls not answered yet (``toolCallCancellation``)."""
        if conv.responses:
            conv.cancel()
        if self.pending_calls:
            ids, self.pending_calls = sorted(self.pending_calls), set()
            await self.send({"toolCallCancellation": {"ids": ids}})

    def _tool_response(self, conv: Conversation, response: dict[str, Any]) -> None:
        """Each function's result joins the conversation; the model goes on from them."""
        answered = pick(response, "functionResponses") or []
        for item in answered:
            call_id = str(item.get("id") or "")
            self.pending_calls.discard(call_id)
            conv.add_call_output(call_id, json.dumps(item.get("response", {})))
        if answered:
            conv.ask(Ask())

    async def _realtime(self, conv: Conversation, rt: dict[str, Any]) -> None:
        for blob in [*(pick(rt, "mediaChunks") or []), pick(rt, "audio"), pick(rt, "video")]:
            if blob:
                self._blob(conv, blob)
        if rt.get("text"):
            await self._interrupt(conv)
            conv.add_message("user", [str(rt["text"])])
            conv.ask(Ask())
        if pick(rt, "activityStart") is not None:
            await self._interrupt(conv)
        if pick(rt, "activityEnd") is not None or pick(rt, "audioStreamEnd"):
            if conv.transcriber is not None and conv.transcriber.vad is not None:
                conv.commit_audio()  # the server's VAD ends turns: this ends the speech held
                return
            await self._interrupt(conv)
            conv.commit_audio()
            conv.ask(Ask())

    def _blob(self, conv: Conversation, blob: dict[str, Any]) -> None:
        mime, data = str(pick(blob, "mimeType") or ""), b64(str(blob.get("data", "")))
        if mime.startswith("image/"):
            conv.add_message("user", [Image(f"data:{mime};base64,{data}")])
        elif mime.startswith("audio/pcm"):
            rate = _rate(mime)
            if rate != self.rate:
                self.rate = rate
                conv.configure(Settings(audio_rate=rate))
            conv.add_audio(data)
        else:
            raise InvalidRequest(f"unsupported mimeType {mime!r}: send image/jpeg or audio/pcm")

    def _content(self, part: dict[str, Any]) -> Content:
        inline = pick(part, "inlineData")
        if inline is None:
            return str(part.get("text", ""))
        mime = str(pick(inline, "mimeType") or "image/jpeg")
        if not mime.startswith("image/"):
            raise InvalidRequest(f"unsupported inline mimeType {mime!r}")
        return Image(f"data:{mime};base64,{b64(inline['data'])}")




def gemini_tools(tools: Any) -> tuple[Tool, ...] | None:
    """``setup.tools[].functionDeclarations`` as functions (their OpenAPI-style ``parameters``
    or their ``parametersJsonSchema``)."""
    if tools is None:
        return None
    out = []
    for entry in tools:
        for decl in pick(entry, "functionDeclarations") or []:
            schema = pick(decl, "parametersJsonSchema") or _json_schema(
                decl.get("parameters") or {"type": "OBJECT", "properties": {}})
            out.append(Tool(str(decl["name"]), str(decl.get("description", "")), schema))
        if set(entry) - {"functionDeclarations", "function_declarations"}:
            raise InvalidRequest(f"only functionDeclarations tools are served here, not "
                                 f"{sorted(set(entry) - {'functionDeclarations'})}")
    return tuple(out)


def gemini_choice(config: Any, tools: tuple[Tool, ...] | None) -> str | None:
    """``toolConfig.functionCallingConfig``: ``AUTO``, ``NONE``, ``ANY`` (``required``, or the
    one function of ``allowedFunctionNames``)."""
    calling = pick(config, "functionCallingConfig") if isinstance(config, dict) else None
    if not isinstance(calling, dict):
        return None
    mode = str(calling.get("mode", "AUTO")).upper()
    allowed = pick(calling, "allowedFunctionNames") or []
    if mode == "ANY" and len(allowed) == 1:
        return str(allowed[0])
    return {"AUTO": "auto", "NONE": "none", "ANY": "required", "VALIDATED": "auto"}.get(mode)


def _json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI-style schema (``type: "OBJECT"``) as JSON schema (``"object"``)."""
    if isinstance(schema, list):
        return [_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _json_schema(v) for k, v in schema.items()}
    if isinstance(out.get("type"), str):
        out["type"] = out["type"].lower()
    return out


class GeminiSink(ResponseSink):
    """A response as Gemini messages: text as ``modelTurn`` parts, each function call as a
    ``toolCall`` once complete, then ``turnComplete`` (or ``interrupted``); an error closes the
    socket with its reason, as Google's server does."""

    def __init__(self, session: GeminiSession) -> None:
        self.session = session

    async def text(self, response: Response, delta: str) -> None:
        if response.speech is None:  # spoken: the words go out with their audio, if asked
            await self.session.send({"serverContent": {"modelTurn": {"parts": [
                {"text": delta}]}}})

    async def audio(self, response: Response, chunk: AudioChunk) -> None:
        if response.speech is not None:
            for message in audio_messages(chunk, self.session.transcribe):
                await self.session.send(message)

    async def failed(self, response: Response, error: StreamAgentError) -> None:
        await self.session.close_with(error.message)

    async def finished(self, response: Response) -> None:
        calls: list[dict[str, Any]] = [{"id": c.call_id, "name": c.name, "args": _args(c.text)}
                                       for c in response.calls.values() if not c.server]
        if calls and response.status != "cancelled":
            self.session.pending_calls.update(str(c["id"]) for c in calls)
            await self.session.send({"toolCall": {"functionCalls": calls}})
        body = ({"interrupted": True} if response.status == "cancelled"
                else {"turnComplete": True})
        await self.session.send({"serverContent": body})


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


class GeminiHeard(Listener):
    """What the user said, as ``serverContent.inputTranscription`` pieces, the last one
    ``finished``, when the client asked for them (the server's VAD hears it either way)."""

    def __init__(self, session: GeminiSession) -> None:
        self.session = session

    async def delta(self, heard: Heard, text: str) -> None:
        if self.session.hear_words:
            await self.session.send({"serverContent": {"inputTranscription": {"text": text}}})

    async def transcribed(self, heard: Heard, transcript: str) -> None:
        if self.session.hear_words:
            await self.session.send({"serverContent": {"inputTranscription": {
                "text": "", "finished": True}}})
