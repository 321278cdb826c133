"""Fakes and helpers for tests, here and in plugin packages. Built on the real base classes."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import random
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageDraw, ImageFont

from agent.config import Config, GenerationConfig, ModelConfig, ProfileConfig
from agent.engine import Entry, ModelRequest, ThreadedEngine
from agent.errors import ConfigError
from agent.families import decoding
from agent.handler import Handler, Question
from agent.hookspecs import hookimpl
from agent.media import Window
from agent.parts import Part, ToolCallDelta, Usage
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.uvicorn_server import Address, running

T = TypeVar("T")

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


@functools.cache
def tiny_tokenizer() -> Any:
    """The byte-level BPE of the tiny checkpoints (``agent/tiny/tokenizer.json``): the fake
    engine counts tokens with it, so its counts agree with the tiny real models'."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(__file__).with_name("tiny") / "tokenizer.json"))


def count_tokens(text: str) -> int:
    """Tokens of ``text`` in the tiny checkpoints' tokenizer (no special tokens)."""
    return len(tiny_tokenizer().encode(text, add_special_tokens=False).ids) if text else 0


def fake_model(**options: Any) -> ModelConfig:
    """A fake model's config whose token limit (``generation.max_new_tokens``, 128 by default,
    which the fake honours as real engines do) lets its whole answer (``tokens``) through."""
    tokens = int(options.get("tokens", 5))
    return ModelConfig(engine="fake", options=options,
                       generation=GenerationConfig(max_new_tokens=max(128, tokens)))


class FakeEngine(ThreadedEngine):
    """Streams ``tokens`` words ("tok0 tok1 ..."), ``delay_s`` apart, then its ``Usage``, and
    keeps the contracts of the real engines (tests/test_engine_contract.py runs the same cases
    on it, on transformers and on vLLM):

    - the generation config (the model's, then the request's options): the answer is ``tokens``
      long, at least ``min_new_tokens``, at most ``max_new_tokens`` (``finish_reason``
      ``length`` when the limit cut it); ``do_sample`` draws the words at random, the same
      ones for the same ``seed``; ``num_beams`` > 1 sends the answer in one piece at the end;
    - option ``stop`` (strings): the answer ends before the first one (``finish_reason``
      ``stop``);
    - option ``lora`` (or the model's ``default_lora``): an adapter of ``options.lora``
      changes the words; any other is refused (``ConfigError``, as the real engines);
    - cancelled mid-answer, it stops and says so (``finish_reason`` ``abort``);
    - tokens are counted with the tiny checkpoints' tokenizer: the prompt's texts (the
      instructions, examples, history, timeline and question), one token per picture, video
      frame and sound; cached, the leading timeline entries the request before had too.

    Option ``tool_call`` (a function name): the answer is a call of that function, in two
    ``ToolCallDelta`` pieces, after the words. Option ``say`` (pieces): said instead of
    ``tokN``. Option ``load_delay_s``: loading takes that long; ``fail_load`` (a message):
    loading fails. ``generated`` counts tokens actually produced, so a test can check that a
    cancelled response really stopped the engine."""

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
        self.loras: dict[str, str] = dict(self.config.options.get("lora") or {})
        self.generated = 0
        self.requests: list[ModelRequest] = []
        self.active = 0
        tiny_tokenizer()  # loaded with the model, not in its first answer

    def generate(self, request: ModelRequest,
                 cancelled: threading.Event) -> Iterator[str | Part]:
        self.requests.append(request)
        opts = decoding(self.config, request.options)  # as the real engines read them
        adapter = self.adapter(request)
        natural = int(request.options.get("tokens", self.tokens))
        limit = opts["max_new_tokens"]
        count = min(max(natural, opts["min_new_tokens"]), limit)
        finish = "length" if count == limit and count != natural else "stop"
        pieces = self.words(count, opts, request.options.get("seed"), adapter)
        stop_at, count = stopped(pieces, list(request.options.get("stop") or ()), count)
        if stop_at is not None:
            finish = "stop"
        self.active += 1
        try:
            if len(self.requests) <= self.fail_requests:
                raise RuntimeError("fake engine failure")
            text, shown, made = "", "", 0
            for i, piece in enumerate(pieces[:count]):
                if cancelled.is_set():
                    finish = "abort"
                    break
                if self.fail_after is not None and i >= int(self.fail_after):
                    raise RuntimeError("fake engine failure")
                if self.delay_s:
                    time.sleep(self.delay_s)
                self.generated += 1
                made += 1
                text += piece
                delta, shown = text[len(shown):stop_at], text[:stop_at]
                if delta and opts["num_beams"] == 1:
                    yield delta
            if opts["num_beams"] > 1 and shown and finish != "abort":
                yield shown  # beam search: the whole answer at the end
            tool = request.options.get("tool_call", self.config.options.get("tool_call"))
            if tool and finish != "abort":
                yield ToolCallDelta(0, f"call_{len(self.requests)}", str(tool), '{"window": ')
                yield ToolCallDelta(0, arguments=f"{len(self.requests)}}}")
            yield Usage(prompt_tokens=prompt_tokens(request), completion_tokens=made,
                        cached_tokens=self.cached(request), finish_reason=finish)
        finally:
            self.active -= 1

    def adapter(self, request: ModelRequest) -> str | None:
        """The request's LoRA adapter (or the model's default), refused if it has none such."""
        name = request.options.get("lora", self.config.options.get("default_lora"))
        if name and name not in self.loras:  # as the real engines
            raise ConfigError(f"model {self.name!r} has no LoRA adapter {name!r}; "
                              f"adapters: {sorted(self.loras)}")
        return str(name) if name else None

    def words(self, count: int, opts: dict[str, Any], seed: Any,
              adapter: str | None) -> list[str]:
        """The answer's pieces: ``tokN`` (or option ``say``'s), drawn at random when
        sampling (the same for the same seed), marked by a LoRA adapter."""
        said = self.config.options.get("say")
        if opts["do_sample"]:
            rng = random.Random(seed)
            pieces = [rng.choice(said) if said else f"tok{rng.randrange(10**6)} "
                      for _ in range(count)]
        else:
            pieces = [said[i % len(said)] if said else f"tok{i} " for i in range(count)]
        return [f"{adapter}:{p}" for p in pieces] if adapter else pieces

    def cached(self, request: ModelRequest) -> int | None:
        """As a prefix cache counts: the tokens of the leading ``sequence`` entries of
        ``request`` that the request before it had too; ``None`` without a sequence."""
        if not request.sequence:
            return None
        at = next(i for i, r in enumerate(self.requests) if r is request)
        now = [(e.role, e.text, e.key) for e in request.sequence]
        before = [(e.role, e.text, e.key) for e in self.requests[at - 1].sequence] if at else []
        same = 0
        while same < min(len(now), len(before)) and now[same] == before[same]:
            same += 1
        return sum(entry_tokens(e) for e in request.sequence[:same])


def stopped(pieces: list[str], stops: list[str], count: int) -> tuple[int | None, int]:
    """Where the first stop string begins in the answer, and the pieces it took to write it
    (``None`` and ``count``: none is written)."""
    text = ""
    for made, piece in enumerate(pieces[:count], 1):
        text += piece
        found = [i for s in stops if (i := text.find(s)) >= 0]
        if found:
            return min(found), made
    return None, count


def entry_tokens(entry: Entry) -> int:
    return count_tokens(entry.text) + (entry.image is not None) + (entry.audio is not None)


def prompt_tokens(request: ModelRequest) -> int:
    """The fake's prompt: the texts it reads, one token per picture, frame and sound."""
    texts = [request.instructions, *(answer for _, answer in request.examples),
             *(turn.text for turn in request.history), request.prompt]
    return (sum(count_tokens(t) for t in texts) + sum(map(entry_tokens, request.sequence))
            + len(request.examples) + len(request.images) + len(request.video)
            + (request.audio is not None))


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
        register("fake", fake_model(**self.engine_options))

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
