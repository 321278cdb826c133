"""The engine interface: run a model, stream answer parts, stop when the stream is closed.

Engines are injected: the pool builds them from config by ``kind``, so the same serving path
runs a fake engine in tests, the embedded CPU models, transformers or vLLM.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from agent.errors import EngineError, InvalidRequest
from agent.media import RGB, Audio
from agent.options import Options
from agent.parts import Part, as_part

if TYPE_CHECKING:
    from agent.config import ModelConfig

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: its name, what it does, and a JSON schema of its
    arguments (an object)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}})

    def spec(self) -> dict[str, Any]:
        """As chat templates and OpenAI's API take it: ``{"type": "function", "function": …}``."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": dict(self.parameters)}}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made earlier in the conversation (``arguments``: JSON text)."""

    call_id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of the conversation. ``role`` is ``user``, ``assistant`` or ``tool``: an
    assistant turn may carry the ``tool_calls`` it made (and no text); a ``tool`` turn is the
    output of call ``call_id``."""

    role: str
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    call_id: str = ""
    item_id: str = ""
    """The conversation item it came from (so a client can delete or truncate it)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One piece of an interleaved conversation (a session's timeline, ``agent.timeline``):
    a text, a picture or a sound, from ``role`` (``user``: what the model was shown or asked;
    ``assistant``: what it said). Consecutive entries of one role make one message."""

    role: str
    text: str = ""
    image: RGB | None = None
    audio: Audio | None = None
    key: str = ""
    """A content hash of the picture or sound, the same for the same content (vLLM's
    ``multi_modal_uuids``: a picture seen before skips its processor and vision encoder)."""


TOOL_CHOICES = ("auto", "none", "required")
"""``tool_choice`` values besides a function's name."""


def check_tools(tools: tuple[Tool, ...], choice: str,
                param: str) -> tuple[tuple[Tool, ...], str]:
    """Functions with unique names, and a choice that is one of ``TOOL_CHOICES`` or names one
    of them."""
    names = [t.name for t in tools]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InvalidRequest(f"functions are named twice: {', '.join(dup)}",
                             param=param.replace("tool_choice", "tools"))
    if choice not in TOOL_CHOICES and choice not in names:
        raise InvalidRequest(
            f"tool_choice {choice!r} is not auto, none, required or a function offered "
            f"({', '.join(names) or 'none offered'})", param=param)
    if choice == "required" and not tools:
        raise InvalidRequest("tool_choice 'required' needs at least one function in tools",
                             param=param)
    return tools, choice


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """Everything a model may look at for one response."""

    prompt: str = ""
    task: str = ""
    """What the handler asks for when no one asked a question: ``caption`` (say what is in
    view), ``ocr`` (read the text in view), or a checkpoint's own task prompt (Florence-2's
    ``<DETAILED_CAPTION>``); ``""``: a question, ``prompt``. Chat models read ``prompt`` (the
    same ask in words); prompt-style checkpoints (BLIP-2, Florence-2, PaliGemma) are prompted
    by task."""
    instructions: str = ""
    images: tuple[RGB, ...] = ()
    video: tuple[RGB, ...] = ()
    video_fps: float = 1.0
    audio: Audio | None = None
    history: tuple[Turn, ...] = ()
    examples: tuple[tuple[RGB, str], ...] = ()
    """Few-shot examples: (image, answer) pairs shown before the question."""
    sequence: tuple[Entry, ...] = ()
    """An interleaved conversation after the instructions and examples (a session's timeline),
    in place of ``history``; the request's own media and ``prompt``, if any, end it."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Per-request decoding overrides (``max_new_tokens``, ``temperature``, ...)."""
    session: str = ""
    """Who asks (a session or request id): the model's scheduler serves them round-robin."""
    live: bool = False
    """A live window's call: it waits for room in a full model queue instead of being refused
    (each handler has at most one in flight)."""
    tools: tuple[Tool, ...] = ()
    """Functions the model may call (rendered by its chat template); its calls come back as
    ``ToolCallDelta`` parts."""
    tool_choice: str = "auto"
    """``auto`` (the model decides), ``none`` (no call), ``required`` (at least one call) or a
    function's name (that call). The last two are enforced by constrained decoding."""
    parallel_tool_calls: bool = True
    """Whether one answer may hold several calls."""
    output_schema: Mapping[str, Any] | None = None
    """A JSON schema the output must follow, enforced by the engine's constrained decoding
    (engines with ``constrains = True``); set by the pool for an enforced ``tool_choice``."""
    voice: str = ""
    """Speak the answer in the model's own voice, as this speaker (one of the engine's
    ``voices``): its ``AudioChunk`` parts come before its text. ``""``: text only."""


class Engine(abc.ABC):
    """Runs one configured model. ``stream`` is an async generator of answer parts (``Usage``
    last, when the engine counts tokens); closing it aborts."""

    kind: ClassVar[str] = ""
    options_model: ClassVar[type[Options] | None] = None
    """The typed ``options:`` of a model on this engine (unknown keys refused at start-up);
    ``None``: any keys (agent/options.py)."""
    uses_families: ClassVar[bool] = False
    """True: built as ``cls(name, config, families=...)`` with the registered model families."""
    modalities: frozenset[str] | None = None
    """What the loaded model takes in (``image``, ``video``, ``audio``); ``None``: not known."""
    converses: bool | None = None
    """Whether the loaded model reads an interleaved conversation (``ModelRequest.sequence``,
    a session's timeline): a chat model does, a prompt-style checkpoint or a family's own
    ``chat()`` does not; ``None``: not known (handlers then send it)."""
    constrains: ClassVar[bool] = False
    """Whether ``stream`` honours ``ModelRequest.output_schema`` (constrained decoding)."""
    tool_format: str | None = None
    """How the model writes a tool call in free text (``hermes``, ``llama3_json``,
    ``mistral``; see ``agent.toolcalls``), learned from its chat template when it loads;
    ``None``: the model was not trained to call tools (only an enforced choice works)."""
    voices: frozenset[str] = frozenset()
    """Speakers of the model's own speech (an omni checkpoint loaded with its talker): a
    request naming one in ``voice`` is answered in speech as well."""
    calls_tools: ClassVar[bool] = False
    """Whether ``stream`` itself yields the model's calls as ``ToolCallDelta`` parts and
    enforces ``tool_choice`` (an upstream API that parses them: ``engine: openai``); the pool
    then passes the request's functions as they are."""

    def __init__(self, name: str, config: ModelConfig) -> None:
        self.name = name
        self.config = config

    def default_workers(self) -> int:
        """Requests this engine runs at once when the config sets no ``workers``.

        Engines that batch on their own (vLLM) take many; blocking engines override this.
        """
        return 64

    @property
    def workers(self) -> int:
        return self.config.workers or self.default_workers()

    async def start(self) -> None:
        """Load the model. Called once, before the first request."""

    @abc.abstractmethod
    def stream(self, request: ModelRequest) -> AsyncGenerator[Part, None]:
        """Yield the answer's parts for ``request``; ``aclose()`` stops generation."""

    async def check_health(self) -> None:
        """Raise if the engine can no longer serve."""

    async def close(self) -> None:
        """Free the model."""


class ThreadedEngine(Engine):
    """An engine whose model calls block: they run on ``workers`` threads.

    Subclasses implement ``load()`` and ``generate(request, cancelled)``, which yields text as
    ``str`` (an engine that only writes text needs nothing more); the generator should
    check ``cancelled`` between steps so that a closed stream frees the thread at once.
    By default one thread runs (a model on a GPU, or one that uses every core itself); an
    engine whose calls are single-threaded sets ``parallel = True`` to get one worker per core,
    and keeps per-thread state with ``per_thread``.
    """

    parallel: ClassVar[bool] = False

    def __init__(self, name: str, config: ModelConfig) -> None:
        super().__init__(name, config)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"engine-{name}")
        self._local = threading.local()

    def default_workers(self) -> int:
        return (os.cpu_count() or 1) if self.parallel else 1

    def per_thread(self, make: Callable[[], T]) -> T:
        """This worker thread's own instance of what ``make`` builds (built on first use)."""
        value: T | None = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = make()
        return value

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.load)
        self._loaded = True

    async def check_health(self) -> None:
        if not getattr(self, "_loaded", False):
            raise EngineError(f"model {self.name!r} is not loaded")
        if self._executor._shutdown:
            raise EngineError(f"model {self.name!r} is closed")

    def load(self) -> None:
        """Load the model (runs on the worker thread)."""

    @abc.abstractmethod
    def generate(self, request: ModelRequest,
                 cancelled: threading.Event) -> Iterator[str | Part]:
        """Yield the answer for ``request``: text as ``str``, other parts as they are (runs on
        the worker thread)."""

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Part, None]:
        cancelled = threading.Event()
        # closed with this stream, not later by the loop's finalizer: the thread has stopped
        # by the time the stream is closed
        async with contextlib.aclosing(iterate_in_thread(
            lambda: self.generate(request, cancelled), self._executor, cancelled
        )) as items:
            async for item in items:
                yield as_part(item)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Stop(Exception):
    pass


async def iterate_in_thread(
    make: Callable[[], Iterator[T]],
    executor: ThreadPoolExecutor | None,
    cancelled: threading.Event,
    max_pending: int = 64,
) -> AsyncGenerator[T, None]:
    """Run a blocking iterator on ``executor`` and yield its items on the event loop.

    At most ``max_pending`` items wait in between (the thread blocks, it never drops). When the
    consumer stops early, ``cancelled`` is set and this waits for the thread to notice, so the
    model is idle again by the time the stream is closed.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
    slots = threading.Semaphore(max_pending)
    stopped = threading.Event()  # the consumer's; a generator may set ``cancelled`` itself

    def emit(done: bool, value: Any) -> None:
        while not slots.acquire(timeout=0.05):
            if stopped.is_set():
                raise _Stop
        loop.call_soon_threadsafe(queue.put_nowait, (done, value))

    def work() -> None:
        items = make()
        try:
            for item in items:
                if stopped.is_set():
                    return
                emit(False, item)
            emit(True, None)
        except _Stop:
            pass
        except Exception as exc:  # handed to the consumer, raised there
            with contextlib.suppress(_Stop, RuntimeError):
                emit(True, exc)
        finally:  # run the generator's own clean-up on this thread, before the stream ends
            close = getattr(items, "close", None)
            if close is not None:
                close()

    future = loop.run_in_executor(executor, work)
    try:
        while True:
            done, value = await queue.get()
            slots.release()
            if done:
                if isinstance(value, Exception):
                    raise value
                return
            yield value
    finally:
        stopped.set()
        cancelled.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(future)
