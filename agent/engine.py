"""The engine interface: run a model, stream text, stop when the stream is closed.

Engines are injected: the pool builds them from config by ``kind``, so the same serving path
runs a fake engine in tests, the embedded CPU models, transformers or vLLM.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from agent.media import RGB, Audio

if TYPE_CHECKING:
    from agent.config import ModelConfig

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Turn:
    role: str
    text: str


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """Everything a model may look at for one response."""

    prompt: str = ""
    instructions: str = ""
    images: tuple[RGB, ...] = ()
    video: tuple[RGB, ...] = ()
    video_fps: float = 1.0
    audio: Audio | None = None
    history: tuple[Turn, ...] = ()
    examples: tuple[tuple[RGB, str], ...] = ()
    """Few-shot examples: (image, answer) pairs shown before the question."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Per-request decoding overrides (``max_new_tokens``, ``temperature``, ...)."""


class Engine(abc.ABC):
    """Runs one configured model. ``stream`` is an async generator; closing it aborts."""

    kind: ClassVar[str] = ""
    uses_families: ClassVar[bool] = False
    """True: built as ``cls(name, config, families=...)`` with the registered model families."""
    modalities: frozenset[str] | None = None
    """What the loaded model takes in (``image``, ``video``, ``audio``); ``None``: not known."""

    def __init__(self, name: str, config: ModelConfig) -> None:
        self.name = name
        self.config = config

    async def start(self) -> None:
        """Load the model. Called once, before the first request."""

    @abc.abstractmethod
    def stream(self, request: ModelRequest) -> AsyncGenerator[str, None]:
        """Yield text deltas for ``request``; ``aclose()`` stops generation."""

    async def check_health(self) -> None:
        """Raise if the engine can no longer serve."""

    async def close(self) -> None:
        """Free the model."""


class ThreadedEngine(Engine):
    """An engine whose model calls block: they run on one worker thread, one at a time.

    Subclasses implement ``load()`` and ``generate(request, cancelled)``; the generator should
    check ``cancelled`` between steps so that a closed stream frees the thread at once.
    """

    def __init__(self, name: str, config: ModelConfig) -> None:
        super().__init__(name, config)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"engine-{name}")

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.load)

    def load(self) -> None:
        """Load the model (runs on the worker thread)."""

    @abc.abstractmethod
    def generate(self, request: ModelRequest, cancelled: threading.Event) -> Iterator[str]:
        """Yield text for ``request`` (runs on the worker thread)."""

    async def stream(self, request: ModelRequest) -> AsyncGenerator[str, None]:
        cancelled = threading.Event()
        async for text in iterate_in_thread(
            lambda: self.generate(request, cancelled), self._executor, cancelled
        ):
            yield text

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Stop(Exception):
    pass


async def iterate_in_thread(
    make: Callable[[], Iterator[T]],
    executor: ThreadPoolExecutor | None,
    cancelled: threading.Event,
    max_pending: int = 64,
) -> AsyncIterator[T]:
    """Run a blocking iterator on ``executor`` and yield its items on the event loop.

    At most ``max_pending`` items wait in between (the thread blocks, it never drops). When the
    consumer stops early, ``cancelled`` is set and this waits for the thread to notice, so the
    model is idle again by the time the stream is closed.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
    slots = threading.Semaphore(max_pending)

    def emit(done: bool, value: Any) -> None:
        while not slots.acquire(timeout=0.05):
            if cancelled.is_set():
                raise _Stop
        loop.call_soon_threadsafe(queue.put_nowait, (done, value))

    def work() -> None:
        items = make()
        try:
            for item in items:
                if cancelled.is_set():
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
        cancelled.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(future)
