"""OpenAI-compatible REST: ``GET /v1/models`` and ``POST /v1/chat/completions`` over the pool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from agent import events, media_files
from agent.engine import ModelRequest, Turn
from agent.errors import InvalidRequest, StreamAgentError, UnknownModel
from agent.runtime import Runtime


class _M(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Url(_M):
    url: str


class TextPart(_M):
    type: Literal["text"]
    text: str


class ImagePart(_M):
    type: Literal["image_url"]
    image_url: _Url | str


class VideoPart(_M):
    type: Literal["video_url"]
    video_url: _Url | str


class _AudioData(_M):
    data: str
    format: str = "wav"


class AudioPart(_M):
    type: Literal["input_audio"]
    input_audio: _AudioData


class AudioUrlPart(_M):
    type: Literal["audio_url"]
    audio_url: _Url | str


Part = Annotated[TextPart | ImagePart | VideoPart | AudioPart | AudioUrlPart,
                 Field(discriminator="type")]


class Message(_M):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = None


class ChatRequest(_M):
    model: str
    messages: list[Message] = Field(min_length=1, max_length=256)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1


def error(status: int, message: str, type_: str = "invalid_request_error",
          code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status)


class ChatAPI:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        cfg = runtime.config.server
        self.policy = media_files.MediaPolicy(cfg.media_dirs, cfg.fetch_urls,
                                              cfg.max_message_bytes)
        self.active = 0

    async def models(self, request: Request) -> JSONResponse:
        now = int(time.time())
        data = [{"id": name, "object": "model", "created": now, "owned_by": "streamagent"}
                for name in self.runtime.pool.names]
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        cfg = self.runtime.config.server
        if self.active >= cfg.max_concurrent_requests:
            return error(503, "the server is busy; retry shortly", "server_error",
                         "server_overloaded")
        body = await _read_limited(request, cfg.max_message_bytes)
        if body is None:
            return error(413, f"request body larger than {cfg.max_message_bytes} bytes",
                         code="request_too_large")
        try:
            chat = ChatRequest.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            return error(400, f"{where}: {first['msg']}", param=where)
        self.active += 1
        try:
            model = self.model_name(chat.model)
            req = await asyncio.to_thread(self.build, chat)
        except UnknownModel as exc:
            self.active -= 1
            return error(404, exc.message, code=exc.code, param="model")
        except StreamAgentError as exc:
            self.active -= 1
            return error(400, exc.message, code=exc.code, param=exc.param)
        if chat.stream:  # the stream holds its own slot: a body never started holds none
            self.active -= 1
            return StreamingResponse(self._sse(chat, model, req), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            text = "".join([d async for d in self._deltas(chat, model, req)])
        except StreamAgentError as exc:
            return error(500, exc.message, "server_error", exc.code)
        finally:
            self.active -= 1
        return JSONResponse(_completion(chat.model, text))

    def model_name(self, name: str) -> str:
        if name in self.runtime.pool.names:
            return name
        if name in self.runtime.config.profiles:  # a profile: its first handler's model
            profile = self.runtime.config.profiles[name]
            for handler in self.runtime.default_handlers(profile):
                model = self.runtime.model_for(handler, profile)
                if model is not None:
                    return model
        raise UnknownModel(f"model {name!r} does not exist; models: {self.runtime.pool.names}")

    def build(self, chat: ChatRequest) -> ModelRequest:
        """The chat as one model request: system text -> instructions, earlier turns ->
        history, every image in user turns -> images, the last video and audio, the last
        user text -> prompt. Media decoding is blocking: run in a thread."""
        last_user = max((i for i, m in enumerate(chat.messages) if m.role == "user"),
                        default=None)
        if last_user is None:
            raise InvalidRequest("messages need a user message", param="messages")
        instructions, history, images = [], [], []
        video: tuple[Any, ...] = ()
        audio = None
        for i, msg in enumerate(chat.messages):
            parts = [TextPart(type="text", text=msg.content)] if isinstance(msg.content, str) \
                else (msg.content or [])
            text = " ".join(p.text for p in parts if isinstance(p, TextPart))
            where = f"messages.{i}.content"
            if msg.role in ("system", "developer"):
                instructions.append(text)
            elif i != last_user and msg.role in ("user", "assistant") and text:
                history.append(Turn(msg.role, text))
            if msg.role != "user":
                continue
            for part in parts:
                if isinstance(part, ImagePart):
                    images.append(media_files.image(self.policy.load(_url(part.image_url),
                                                                     where), where))
                elif isinstance(part, VideoPart):
                    video = media_files.video(self.policy.load(_url(part.video_url), where),
                                              where)
                elif isinstance(part, AudioPart):
                    audio = media_files.audio(self.policy.load(part.input_audio.data, where),
                                              where)
                elif isinstance(part, AudioUrlPart):
                    audio = media_files.audio(self.policy.load(_url(part.audio_url), where),
                                              where)
        prompt = chat.messages[last_user].content
        if not isinstance(prompt, str):
            prompt = " ".join(p.text for p in prompt or [] if isinstance(p, TextPart))
        return ModelRequest(prompt=prompt, instructions="\n".join(instructions),
                            images=tuple(images), video=video, video_fps=1.0, audio=audio,
                            history=tuple(history), options=_options(chat))

    async def _deltas(self, chat: ChatRequest, model: str, req: ModelRequest,
                      ) -> AsyncIterator[str]:
        stops = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or [])
        hold = max((len(s) for s in stops), default=1) - 1
        pending = ""
        async with contextlib.aclosing(self.runtime.pool.stream(model, req)) as stream:
            async for delta in stream:
                pending += delta
                cut = min((pending.find(s) for s in stops if s in pending), default=-1)
                if cut >= 0:
                    if pending[:cut]:
                        yield pending[:cut]
                    return  # closing the stream aborts generation
                if len(pending) > hold:
                    yield pending[:len(pending) - hold]
                    pending = pending[len(pending) - hold:]
        if pending:
            yield pending

    async def _sse(self, chat: ChatRequest, model: str, req: ModelRequest) -> AsyncIterator[str]:
        cid, created = events.new_id("chatcmpl"), int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": chat.model, "choices": [{"index": 0, "delta": delta,
                                                      "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n"

        self.active += 1
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for delta in self._deltas(chat, model, req):
                yield chunk({"content": delta})
            yield chunk({}, "stop")
        except StreamAgentError as exc:
            err = {"message": exc.message, "type": "server_error", "code": exc.code}
            yield f"data: {json.dumps({'error': err})}\n\n"
        finally:
            self.active -= 1
        yield "data: [DONE]\n\n"


def _url(value: _Url | str) -> str:
    return value.url if isinstance(value, _Url) else value


def _options(chat: ChatRequest) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if chat.temperature is not None:
        opts["do_sample"] = chat.temperature > 0
        if chat.temperature > 0:
            opts["temperature"] = chat.temperature
    if chat.top_p is not None:
        opts["top_p"] = chat.top_p
    limit = chat.max_completion_tokens or chat.max_tokens
    if limit is not None:
        opts["max_new_tokens"] = limit
        opts["min_new_tokens"] = 0
    if chat.seed is not None:
        opts["seed"] = chat.seed
    return opts


def _completion(model: str, text: str) -> dict[str, Any]:
    return {"id": events.new_id("chatcmpl"), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


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
