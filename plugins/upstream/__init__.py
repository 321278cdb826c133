"""``engine: openai``: a model served by another server that speaks OpenAI chat completions.

Ollama, llama.cpp's ``llama-server``, LM Studio, ``vllm serve``, SGLang and hosted APIs: each
request goes out as a streamed chat completion (pictures as JPEG data URLs, a video as frames or
one MP4, a sound as WAV ``input_audio``; plugins/upstream/messages.py). Text, tool calls and
usage stream back as answer parts. Closing the stream closes the HTTP response, which the
upstream takes as a cancel (vLLM and SGLang abort the request). Connection failures, 408, 409,
429 and 5xx answers are retried with exponential backoff (the openai client's) before any
token has streamed; the upstream's errors become ours (a refused request: ``invalid_request``,
naming the upstream's reason; everything else: ``engine_error``).

    models:
      vision:
        engine: openai
        source: Qwen/Qwen2.5-VL-7B-Instruct     # the upstream's model name
        handlers: [describe, video]
        options:
          base_url: http://127.0.0.1:8000/v1
          api_key_env: UPSTREAM_API_KEY
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator
from typing import Any, Literal

from pydantic import Field

from agent import (
    ConfigError,
    Engine,
    EngineError,
    InvalidRequest,
    ModelConfig,
    ModelRequest,
    Options,
    Part,
    TextDelta,
    ToolCallDelta,
    Usage,
    decoding,
    hookimpl,
)
from plugins.upstream.messages import chat


class UpstreamOptions(Options):
    base_url: str
    """The upstream's OpenAI API root, e.g. ``http://127.0.0.1:11434/v1`` (Ollama)."""
    api_key: str | None = None
    """The key, written here; prefer ``api_key_env``."""
    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable that holds the key (a local server needs none)."""
    takes: tuple[Literal["image", "video", "audio"], ...] = ("image", "video")
    """What the upstream model takes in besides text."""
    video: Literal["frames", "video_url"] = "frames"
    """A video as its frames (every vision model), or one ``video_url`` MP4 (vLLM, SGLang)."""
    max_pixels: int = Field(default=640 * 480, ge=28 * 28)
    """Pictures and frames are scaled down to at most this many pixels before they are sent."""
    timeout_s: float = Field(default=60.0, gt=0)
    """The longest wait for the upstream's next bytes."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries, with exponential backoff, of a request the upstream failed before streaming."""
    extended_sampling: bool = False
    """Also send ``top_k``, ``repetition_penalty`` and ``min_tokens`` (vLLM, SGLang and
    llama-server take them; OpenAI's API refuses them)."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Any other fields for every request, as the upstream documents them."""


class UpstreamEngine(Engine):
    """A model behind an OpenAI-compatible server (see the module's docstring)."""

    kind = "openai"
    options_model = UpstreamOptions
    constrains = True  # output_schema goes out as response_format json_schema
    calls_tools = True
    converses = True

    def __init__(self, name: str, config: ModelConfig) -> None:
        super().__init__(name, config)
        if not config.source:
            raise ConfigError(f"model {name!r}: engine openai needs source, the upstream's "
                              "model name (as its /v1/models lists it)")
        self.opts = UpstreamOptions.of(config.options)
        self.takes: frozenset[str] = frozenset(self.opts.takes)
        self.modalities = self.takes
        self.client: Any = None

    def default_workers(self) -> int:
        return 16

    async def start(self) -> None:
        try:
            import openai
        except ImportError as exc:
            raise ConfigError("engine openai needs the openai client: "
                              "pip install 'streamagent[upstream]'") from exc
        self.client = openai.AsyncOpenAI(
            base_url=self.opts.base_url,
            api_key=self.opts.api_key or os.environ.get(self.opts.api_key_env) or "none",
            max_retries=self.opts.max_retries,
            timeout=openai.Timeout(self.opts.timeout_s, connect=self.opts.connect_timeout_s))
        try:
            names = [m.id async for m in self.client.models.list()]
        except openai.APIError as exc:
            await self.close()
            raise ConfigError(f"model {self.name!r}: the upstream at {self.opts.base_url} "
                              f"did not answer /models: {_why(exc)}") from exc
        if names and self.config.source not in names:
            await self.close()
            raise ConfigError(f"model {self.name!r}: the upstream at {self.opts.base_url} has "
                              f"no model {self.config.source!r}; it has: {', '.join(names)}")

    async def check_health(self) -> None:
        await self.client.models.list()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def body(self, request: ModelRequest) -> dict[str, Any]:
        """The chat completion request (without ``messages``)."""
        opts = decoding(self.config, request.options)
        body: dict[str, Any] = {"model": self.config.source, "stream": True,
                                "stream_options": {"include_usage": True},
                                "max_tokens": opts["max_new_tokens"],
                                "temperature": opts.get("temperature", 0.0)}
        if opts["do_sample"]:
            body["top_p"] = opts["top_p"]
        if "seed" in request.options:
            body["seed"] = int(request.options["seed"])
        if "stop" in request.options:
            body["stop"] = request.options["stop"]
        extra = dict(self.opts.extra_body)  # fields the openai client does not declare
        if self.opts.extended_sampling:
            extra.update(min_tokens=opts["min_new_tokens"],
                         repetition_penalty=opts["repetition_penalty"])
            if opts["do_sample"]:
                extra["top_k"] = opts["top_k"]
        if request.tools and request.tool_choice != "none":
            body["tools"] = [tool.spec() for tool in request.tools]
            body["tool_choice"] = (request.tool_choice if request.tool_choice in (
                "auto", "required") else {"type": "function",
                                          "function": {"name": request.tool_choice}})
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.output_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": dict(request.output_schema), "strict": True}}
        return {**body, "extra_body": extra} if extra else body

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Part, None]:
        import openai

        body = self.body(request)
        body["messages"] = chat(request, self.takes, self.opts.max_pixels,
                                self.opts.video)
        try:
            response = await self.client.chat.completions.create(**body)
        except openai.APIStatusError as exc:
            if exc.status_code in (400, 413, 422):
                raise InvalidRequest(f"model {self.name!r}: the upstream refused the request: "
                                     f"{_why(exc)}") from exc
            raise EngineError(f"model {self.name!r}: the upstream failed: {_why(exc)}") from exc
        except openai.APIError as exc:
            raise EngineError(f"model {self.name!r}: the upstream at {self.opts.base_url} "
                              f"failed: {_why(exc)}") from exc
        usage, finish = None, None
        async with contextlib.aclosing(_chunks(response, self.name)) as chunks:
            async for chunk in chunks:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices[:1]:
                    finish = choice.finish_reason or finish
                    for part in _parts(choice.delta):
                        yield part
        yield _usage(usage, finish)


async def _chunks(response: Any, name: str) -> AsyncGenerator[Any, None]:
    """The stream's chunks; a broken stream as ``EngineError``; closed (the upstream's cancel)
    when the consumer stops."""
    import openai

    try:
        async for chunk in response:
            yield chunk
    except (openai.APIError, OSError) as exc:
        raise EngineError(f"model {name!r}: the upstream's stream broke: {_why(exc)}") from exc
    except Exception as exc:  # httpx's protocol errors: the upstream went away mid-answer
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise EngineError(f"model {name!r}: the upstream's stream broke: "
                              f"{_why(exc)}") from exc
        raise
    finally:
        await response.close()


def _parts(delta: Any) -> list[Part]:
    parts: list[Part] = []
    if delta.content:
        parts.append(TextDelta(delta.content))
    for call in delta.tool_calls or ():
        fn = call.function
        parts.append(ToolCallDelta(index=call.index, call_id=call.id or "",
                                   name=(fn.name or "") if fn else "",
                                   arguments=(fn.arguments or "") if fn else ""))
    return parts


def _usage(usage: Any, finish: str | None) -> Usage:
    if usage is None:
        return Usage(finish_reason=finish)
    details = getattr(usage, "prompt_tokens_details", None)
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                 cached_tokens=getattr(details, "cached_tokens", None), finish_reason=finish)


def _why(exc: Exception) -> str:
    """The upstream's own words: its error body's message (OpenAI's ``{"error": {"message"}}``
    or vLLM's ``{"message"}``), with the HTTP status."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    detail = body.get("message") if isinstance(body, dict) else None
    status = getattr(exc, "status_code", None)
    if detail and status:
        return f"{detail} (HTTP {status})"
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


@hookimpl
def register_engines(register: Any) -> None:
    register(UpstreamEngine)
