"""OpenAI-compatible REST: ``GET /v1/models``, ``GET /v1/models/{id}`` and
``POST /v1/chat/completions``. A name is resolved as on every protocol (``Runtime.profile``):
a profile answers through its handlers, as a realtime session would; a model name talks to
that model directly."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from agent import oneshot
from agent.audio import wav_bytes
from agent.engine import ModelRequest
from agent.errors import InvalidRequest, StreamAgentError, UnknownModel
from agent.handler import ResponseOptions
from agent.ids import new_id
from agent.parts import AudioChunk, Part, TextDelta, ToolCallDelta, Usage, total_usage
from agent.protocols.chat.request import Builder, ChatRequest, explain
from agent.protocols.common import check_containers
from agent.runtime import Runtime
from agent.voice import Speech, speak, speaker


def error(status: int, message: str, type_: str = "invalid_request_error",
          code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status)


def status_of(exc: StreamAgentError) -> int:
    """The HTTP status of an error: the client's mistake 400 (429 for a rate), a full model
    queue 503 (retry), anything else 500."""
    if isinstance(exc, InvalidRequest):
        return 429 if exc.retryable else 400
    return 503 if exc.retryable else 500


class ChatAPI:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.build = Builder(runtime.config.server)
        self.active = 0

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": model_list(self.runtime)})

    async def model(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        for entry in model_list(self.runtime):
            if entry["id"] == name:
                return JSONResponse(entry)
        return error(404, f"The model {name!r} does not exist; {self.runtime.valid_names()}",
                     code="model_not_found", param="model")

    async def completions(self, request: Request) -> Response:
        cfg = self.runtime.config.server
        if self.active >= cfg.max_concurrent_requests:  # checked and counted in one step
            return error(503, "the server is busy; retry shortly", "server_error",
                         "server_overloaded")
        self.active += 1
        handed_over = False
        try:
            response = await self._complete(request)
            if isinstance(response, _SlotStream):
                response.release, handed_over = self._release, True
            return response
        finally:
            if not handed_over:
                self.active -= 1

    def _release(self) -> None:
        self.active -= 1

    async def _complete(self, request: Request) -> Response:
        cfg = self.runtime.config.server
        try:
            async with asyncio.timeout(cfg.read_timeout_s):
                body = await _read_limited(request, cfg.max_message_bytes)
        except TimeoutError:
            return error(408, f"the request body did not arrive within {cfg.read_timeout_s:g} s "
                         "(server.read_timeout_s)", code="request_timeout")
        if body is None:
            return error(413, f"request body larger than {cfg.max_message_bytes} bytes "
                         "(server.max_message_bytes)", code="request_too_large")
        try:
            check_containers(body)
            chat = ChatRequest.model_validate_json(body)
        except InvalidRequest as exc:
            return error(400, exc.message)
        except ValidationError as exc:
            message, where = explain(exc)
            return error(400, message, param=where)
        try:
            self.runtime.profile(chat.model)
            req = await asyncio.to_thread(self.build, chat)
        except UnknownModel as exc:
            return error(404, exc.message, code=exc.code, param="model")
        except StreamAgentError as exc:
            return error(400, exc.message, code=exc.code, param=exc.param)
        try:
            speech = self._speech(chat)
        except StreamAgentError as exc:
            return error(400, exc.message, code=exc.code, param=exc.param)
        if chat.stream:
            return _SlotStream(self._sse(chat, req, speech), media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache"})
        try:
            cut = _Cut()
            deltas = [d async for d in self._deltas(chat, req, cut, speech)]
        except StreamAgentError as exc:
            return error(status_of(exc), exc.message, exc.type, exc.code, exc.param)
        text = "".join(d for d in deltas if isinstance(d, str))
        heard = [d for d in deltas if isinstance(d, AudioChunk)]
        reply = _completion(chat.model, text, cut)
        if speech is not None and chat.audio is not None:
            reply["choices"][0]["message"] |= {"content": None, "audio": spoken_audio(
                heard, chat.audio.format, speech.rate)}
        return JSONResponse(reply)

    def _speech(self, chat: ChatRequest) -> Speech | None:
        """``modalities: ["text", "audio"]``: the answer spoken in ``audio.voice``, as WAV or
        raw PCM16 (a stream: PCM16 only, as OpenAI's)."""
        if "audio" not in (chat.modalities or []):
            return None
        if chat.audio is None:
            raise InvalidRequest("modalities includes audio: say how in audio "
                                 "({\"voice\": …, \"format\": …})", param="audio")
        formats = ("pcm16",) if chat.stream else ("wav", "pcm16")
        if chat.audio.format not in formats:
            raise InvalidRequest(f"audio.format {chat.audio.format!r} is not served here; "
                                 f"use {' or '.join(formats)}", param="audio.format")
        return Speech(self.runtime.voice(chat.audio.voice_name()), on=True)

    def _answer(self, name: str, req: ModelRequest,
                speech: Speech | None) -> AsyncGenerator[Part, None]:
        """The same rule as every protocol: a profile answers through its handlers, a model
        name is that model (which speaks itself when ``speech`` is its own voice)."""
        profiles = self.runtime.config.profiles
        if name in profiles:
            return oneshot.profile_answer(self.runtime, profiles[name], req, speaker(speech))
        options = ResponseOptions(speaker=speaker(speech))
        return self.runtime.pool.stream(name, options.apply(req, name))

    async def _deltas(self, chat: ChatRequest, req: ModelRequest, ended: _Cut,
                      speech: Speech | None = None,
                      ) -> AsyncIterator[str | ToolCallDelta | AudioChunk]:
        """The answer's text, cut before the first stop string (which ends generation and
        makes the finish reason ``stop``, whatever the engine reports as it stops). The
        answer's ``Usage`` parts are collected in ``ended``."""
        stops = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or [])
        hold = max((len(s) for s in stops), default=1) - 1
        pending = ""
        answer = self._answer(chat.model, req, speech)
        if speech is not None:  # speak's stream is an async generator: it closes
            answer = cast(AsyncGenerator[Part, None], speak(answer, speech))
        async with contextlib.aclosing(answer) as stream:
            async for part in stream:
                if isinstance(part, AudioChunk):
                    yield part
                if isinstance(part, Usage):
                    ended.usage.append(part)
                elif isinstance(part, ToolCallDelta) and not part.server:
                    yield ended.call(part)  # the server's own tools run unseen
                if not isinstance(part, TextDelta):
                    continue
                pending += part.text
                cut = min((pending.find(s) for s in stops if s in pending), default=-1)
                if cut >= 0:
                    if pending[:cut]:
                        yield pending[:cut]
                    ended.stopped = True
                    return  # closing the stream aborts generation
                if len(pending) > hold:
                    yield pending[:len(pending) - hold]
                    pending = pending[len(pending) - hold:]
        if pending:
            yield pending

    async def _sse(self, chat: ChatRequest, req: ModelRequest,
                   speech: Speech | None = None) -> AsyncIterator[str]:
        cid, created, audio_id = new_id("chatcmpl"), int(time.time()), new_id("audio")

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": chat.model, "choices": choices, **extra}
            return f"data: {json.dumps(body)}\n\n"

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "finish_reason": finish}]

        try:
            yield chunk(choice({"role": "assistant", "content": ""}))
            cut = _Cut()
            async for delta in self._deltas(chat, req, cut, speech):
                if isinstance(delta, AudioChunk):  # spoken: the words come as its transcript
                    yield chunk(choice({"audio": {
                        "id": audio_id, "data": base64.b64encode(delta.pcm16).decode(),
                        "transcript": delta.transcript,
                        "expires_at": created + AUDIO_KEPT_S}}))
                elif isinstance(delta, str):
                    if speech is None:
                        yield chunk(choice({"content": delta}))
                else:
                    yield chunk(choice({"tool_calls": [tool_call(delta)]}))
            yield chunk(choice({}, cut.finish_reason()))
            if chat.stream_options is not None and chat.stream_options.include_usage:
                yield chunk([], usage=cut.wire_usage())
        except StreamAgentError as exc:
            err = {"message": exc.message, "type": "server_error", "code": exc.code}
            yield f"data: {json.dumps({'error': err})}\n\n"
        yield "data: [DONE]\n\n"


class _SlotStream(StreamingResponse):
    """A streamed completion that holds its concurrency slot until the response is over,
    however it ends (sent, failed, or a client gone before the body started)."""

    release: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.release is not None:
                self.release()
                self.release = None


def model_list(runtime: Runtime) -> list[dict[str, Any]]:
    """Profiles then models, in OpenAI's shape; ``owned_by`` says which, and ``streamagent``
    holds the kind and the input modalities."""
    created = int(time.time())
    out = []
    for name in runtime.profile_names:
        handlers = runtime.default_handlers(runtime.config.profiles[name])
        out.append(_entry(name, "profile", created, _modalities(runtime, handlers),
                          handlers=handlers))
    for name in runtime.pool.names:
        users = [h for h in runtime.registry.handlers if runtime.handler_model(h) == name or
                 any(p.models.get(h) == name for p in runtime.config.profiles.values())]
        out.append(_entry(name, "model", created, _modalities(runtime, users)))
    return out


def _entry(name: str, kind: str, created: int, modalities: list[str],
           **extra: Any) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created,
            "owned_by": f"streamagent-{kind}",
            "streamagent": {"kind": kind, "input_modalities": modalities, **extra}}


def _modalities(runtime: Runtime, handlers: list[str]) -> list[str]:
    kinds = {runtime.registry.handlers[h].modality for h in handlers
             if h in runtime.registry.handlers}
    return ["text", *sorted(kinds)]


@dataclass(slots=True)
class _Cut:
    stopped: bool = False
    """Whether a stop string ended the answer."""
    usage: list[Usage] = field(default_factory=list)
    """The answer's model calls' ``Usage`` parts."""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    """The answer's function calls, whole, by index."""

    def call(self, part: ToolCallDelta) -> ToolCallDelta:
        """Add a piece to its call; the first piece of a call gets an id if it has none."""
        if part.index in self.calls:
            self.calls[part.index]["function"]["arguments"] += part.arguments
            return part
        if not part.call_id:
            part = replace(part, call_id=new_id("call"))
        self.calls[part.index] = tool_call(part)
        return part

    def finish_reason(self) -> str:
        if self.stopped:
            return "stop"
        return "tool_calls" if self.calls else total_usage(self.usage).finish_reason or "stop"

    def wire_usage(self) -> dict[str, Any]:
        """Token counts as the engines reported them (a profile's: summed over its handlers'
        model calls); 0 where an engine counts none (the embedded models)."""
        total = total_usage(self.usage)
        prompt, completion = total.prompt_tokens or 0, total.completion_tokens or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": total.cached_tokens or 0}}


def tool_call(part: ToolCallDelta) -> dict[str, Any]:
    """A function call's piece as a chat tool call (a whole call: pieces added up)."""
    call: dict[str, Any] = {"index": part.index, "function": {"arguments": part.arguments}}
    if part.call_id:
        call.update(id=part.call_id, type="function")
    if part.name:
        call["function"]["name"] = part.name
    return call


def _completion(model: str, text: str, cut: _Cut) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if cut.calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"}
                                 for c in cut.calls.values()]
    else:
        message["content"] = text
    return {"id": new_id("chatcmpl"), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": cut.finish_reason()}],
            "usage": cut.wire_usage()}


async def _read_limited(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


AUDIO_KEPT_S = 3600
"""``audio.expires_at``: an answer's audio id may be referred to this long (OpenAI's: one
hour); the server keeps nothing, the client sends the transcript back as text."""


def spoken_audio(chunks: list[AudioChunk], fmt: str, rate: int) -> dict[str, Any]:
    """A whole spoken answer as ``message.audio``: WAV (mono 16-bit) or raw PCM16."""
    pcm = b"".join(c.pcm16 for c in chunks)
    if fmt == "wav":
        pcm = wav_bytes(pcm, rate)
    return {"id": new_id("audio"), "data": base64.b64encode(pcm).decode(),
            "expires_at": int(time.time()) + AUDIO_KEPT_S,
            "transcript": "".join(c.transcript for c in chunks).strip()}
