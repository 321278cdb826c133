"""Fakes and helpers for tests, here and in plugin packages. Built on the real base classes."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from PIL import Image, ImageDraw, ImageFont

from agent.config import Config, ModelConfig, ProfileConfig
from agent.engine import ModelRequest, ThreadedEngine
from agent.errors import ConfigError
from agent.handler import Handler, Question
from agent.hookspecs import hookimpl
from agent.media import Window
from agent.parts import Part, ToolCallDelta, Usage
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.uvicorn_server import Address, running

T = TypeVar("T")

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


class FakeEngine(ThreadedEngine):
    """Streams ``tokens`` words ("tok0 tok1 ..."), ``delay_s`` apart, at most ``max_new_tokens``
    of them (a request option), then its ``Usage`` as a real engine does (prompt: one token per
    word and per ``sequence`` entry; cached: the entries a prefix cache would hold, see
    ``cached``); counts what it did. Option ``tool_call`` (a function name): the answer is a call
    of that function, in two ``ToolCallDelta`` pieces, after the words. Option
    ``load_delay_s``: loading takes that long; ``fail_load`` (a message): loading fails.

    ``generated`` counts tokens actually produced, so a test can check that a cancelled
    response really stopped the engine."""

    kind = "fake"

    def load(self) -> None:
        time.sleep(float(self.config.options.get("load_delay_s", 0.0)))  # a slow model's load
        if self.config.options.get("fail_load"):
            raise RuntimeError(str(self.config.options["fail_load"]))
        self.tokens = int(self.config.options.get("tokens", 5))
        self.delay_s = float(self.config.options.get("delay_s", 0.0))
        self.fail_after = self.config.options.get("fail_after")
        self.fail_requests = int(self.config.options.get("fail_requests", 0))
        """Option ``fail_requests``: the first N requests fail before a token."""
        if "modalities" in self.config.options:  # what it says it takes in, as loaded models do
            self.modalities = frozenset(self.config.options["modalities"])
        self.generated = 0
        self.requests: list[ModelRequest] = []
        self.active = 0

    def generate(self, request: ModelRequest,
                 cancelled: threading.Event) -> Iterator[str | Part]:
        self.requests.append(request)
        adapter = request.options.get("lora")
        if adapter and adapter not in (self.config.options.get("lora") or {}):
            # as the vLLM engine: an adapter the model does not have is refused
            raise ConfigError(f"model {self.name!r} has no LoRA adapter {adapter!r}; adapters: "
                              f"{sorted(self.config.options.get('lora') or {})}")
        self.active += 1
        tokens = int(request.options.get("tokens", self.tokens))
        limit = int(request.options.get("max_new_tokens", tokens))  # as a real engine stops
        try:
            if len(self.requests) <= self.fail_requests:
                raise RuntimeError("fake engine failure")
            said = self.config.options.get("say")  # option say: these pieces, not tokN
            for i in range(min(tokens, limit)):
                if cancelled.is_set():
                    return
                if self.fail_after is not None and i >= int(self.fail_after):
                    raise RuntimeError("fake engine failure")
                if self.delay_s:
                    time.sleep(self.delay_s)
                self.generated += 1
                yield said[i % len(said)] if said else f"tok{i} "
            if tool := request.options.get("tool_call", self.config.options.get("tool_call")):
                yield ToolCallDelta(0, f"call_{len(self.requests)}", str(tool), '{"window": ')
                yield ToolCallDelta(0, arguments=f"{len(self.requests)}}}")
            yield Usage(prompt_tokens=len(request.prompt.split()) + len(request.sequence),
                        completion_tokens=min(tokens, limit), cached_tokens=self.cached(request),
                        finish_reason="length" if limit < tokens else "stop")
        finally:
            self.active -= 1

    def cached(self, request: ModelRequest) -> int | None:
        """As a prefix cache counts: the leading ``sequence`` entries of ``request`` (one
        token each) that the request before it had too; ``None`` without a sequence."""
        if not request.sequence:
            return None
        at = next(i for i, r in enumerate(self.requests) if r is request)
        now = [(e.role, e.text, e.key) for e in request.sequence]
        before = [(e.role, e.text, e.key) for e in self.requests[at - 1].sequence] if at else []
        same = 0
        while same < min(len(now), len(before)) and now[same] == before[same]:
            same += 1
        return same


class EchoHandler(Handler):
    """Live: says which window it saw, at once (no model). Asked: streams from the fake model."""

    name = "echo"
    modality = "image"
    default_model = "fake"
    enabled_by_default = False

    async def respond(self, work: Window) -> AsyncIterator[str | Part]:
        assert work.frame is not None
        if self.ctx.options.get("via_model"):  # option via_model: one call to the model
            tokens = int(self.ctx.options.get("tokens", 1))  # of the answer (option tokens)
            async for part in self.ctx.stream(ModelRequest(prompt=f"window {work.index}",
                                                           options={"tokens": tokens})):
                yield part
            return
        if not self.ctx.options.get("decode", True):  # option decode=false: pure overhead
            yield f"window {work.index}"
            return
        image = await asyncio.to_thread(work.frame.image)
        yield f"window {work.index}: {image.shape[1]}x{image.shape[0]}"

    async def answer(self, question: Question) -> AsyncIterator[str | Part]:
        request = ModelRequest(prompt=question.text, history=question.history)
        async for part in self.ctx.stream(request, question.options):
            yield part


class FakePlugin:
    """Registers FakeEngine (model "fake") and EchoHandler."""

    def __init__(self, **engine_options: Any) -> None:
        self.engine_options = engine_options

    @hookimpl
    def register_engines(self, register: Any) -> None:
        register(FakeEngine)

    @hookimpl
    def register_models(self, register: Any) -> None:
        register("fake", ModelConfig(engine="fake", options=self.engine_options))

    @hookimpl
    def register_handlers(self, register: Any) -> None:
        register(EchoHandler)


def fake_runtime(handlers: tuple[str, ...] = ("echo",), live: bool = False,
                 plugins: tuple[object, ...] = (), **engine_options: Any) -> Runtime:
    config = Config(profiles={"default": ProfileConfig(handlers=list(handlers), live=live)})
    pm = get_plugin_manager([FakePlugin(**engine_options), *plugins])
    return Runtime.build(config, pm)


def jpeg_bytes(text: str = "", size: tuple[int, int] = (320, 240), font_size: int = 48,
               color: str = "white", quality: int = 85) -> bytes:
    img = Image.new("RGB", size, color)
    if text:
        draw = ImageDraw.Draw(img)
        draw.text((20, size[1] // 2 - font_size // 2), text, fill="black",
                  font=ImageFont.truetype(FONT, font_size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_event(url: str, timestamp: float | None = None,
                text: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "input_image", "image_url": url}
    if timestamp is not None:
        part["streamagent"] = {"timestamp": timestamp}
    content = [part] + ([{"type": "input_text", "text": text}] if text else [])
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": content}}


class ServerThread:
    """Runs a gateway for ``runtime`` on a free port in a thread with its own event loop."""

    def __init__(self, runtime: Runtime, port: int = 0) -> None:
        self.runtime = runtime
        self.port = port
        self.address: Address | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="streamagent-server", daemon=True)

    def __enter__(self) -> Address:
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise self._error
        assert self.address is not None, "server did not start in 120 s"
        return self.address

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 120) -> T:
        """Run ``coro`` on the server's event loop (where its engines run) and return its
        result."""
        assert self._loop is not None, "the server is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _main(self) -> None:
        async def go() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            try:
                async with running(self.runtime, port=self.port) as address:
                    self.address = address
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                self._ready.set()

        asyncio.run(go())
