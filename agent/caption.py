"""``streamagent caption DIR``: caption every image in a folder with a model, at dataset scale.

The folder listing streams (agent/caption_files.py); a bounded queue feeds ``concurrency``
workers (the vLLM engine batches their requests; a blocking engine takes them one by one);
each caption is appended through a ``Sink`` (agent/caption_sinks.py: ``txt`` sidecars,
``jsonl``, ``json``, ``parquet``) the moment it is made. So the cost per image and the memory
do not grow with the folder, and a run killed at any point resumes from what is on disk: no
image lost, none captioned twice. An unreadable image or a failed model call is recorded in
the errors log and the run goes on (the next run tries it again); a model that fails
``FAIL_LIMIT`` images in a row stops the run. The Ray Data path (agent/caption_ray.py) writes
through the same sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agent.caption_files import read, walk
from agent.caption_journal import CaptionError
from agent.caption_sinks import Caption, Failure, Sink, infer_format, open_sink
from agent.engine import Engine, ModelRequest, iterate_in_thread
from agent.parts import text_only

__all__ = ["CaptionAsk", "CaptionError", "CaptionRun", "answer", "caption_folder", "own_ask",
           "pending"]

FAIL_LIMIT = 32
"""Model failures in a row that stop a run (a broken model, not a bad image)."""
DESCRIBE = "Describe this image."
"""What a chat model is asked when no ``--prompt`` is given (Qwen2-VL's model card asks so)."""
OWN: dict[str, tuple[str, str, dict[str, Any]]] = {
    # fpgaminer/joycaption's own recipe (the captioning guide, JoyCaption Alpha Two):
    # a system prompt, its captioning instruction, sampling at temperature 0.6, top-p 0.9
    "joycaption": ("Write a long descriptive caption for this image in a formal tone.",
                   "You are a helpful image captioner.",
                   {"do_sample": True, "temperature": 0.6, "top_p": 0.9}),
}
"""Checkpoints with a captioning recipe of their own, by a word of their source's name."""


@dataclass(frozen=True, slots=True)
class CaptionAsk:
    """What each image is asked, and how its caption is written down. ``task`` is what a
    prompt-style checkpoint is asked (``caption``: BLIP-2 with no text, Florence-2
    ``<MORE_DETAILED_CAPTION>``, PaliGemma ``caption en``; or one of its own task prompts);
    chat models read ``prompt`` (and ``instructions``, their system prompt)."""

    prompt: str = DESCRIBE
    task: str = "caption"
    instructions: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Decoding options of each request (``max_new_tokens``, ``temperature``, ...)."""
    prefix: str = ""
    suffix: str = ""
    """Written before and after each caption, as they are (trigger words: ``"ohwx, "``)."""

    def request(self, image: np.ndarray) -> ModelRequest:
        return ModelRequest(prompt=self.prompt, task=self.task, instructions=self.instructions,
                            images=(image,), options=dict(self.options))

    def text(self, caption: str) -> str:
        return f"{self.prefix}{caption.strip()}{self.suffix}"


def own_ask(source: str, prompt: str | None = None, task: str | None = None,
            system: str | None = None, options: Mapping[str, Any] | None = None,
            prefix: str = "", suffix: str = "") -> CaptionAsk:
    """The model's own way to caption unless told otherwise: its task for prompt-style
    checkpoints, its recipe for the checkpoints in ``OWN``, else ``DESCRIBE``. A ``prompt`` of
    one's own is a question for every model (no task), as handlers ask."""
    own_prompt, own_system, own_options = next(
        (v for k, v in OWN.items() if k in source.lower()), (DESCRIBE, "", {}))
    return CaptionAsk(prompt=prompt or own_prompt,
                      task=task if task is not None else ("" if prompt else "caption"),
                      instructions=system if system is not None else own_system,
                      options={**own_options, **(options or {})}, prefix=prefix, suffix=suffix)


@dataclass
class CaptionRun:
    """What a run did, for its summary."""

    done: int = 0
    skipped: int = 0
    """Images captioned before this run (left alone)."""
    errors: int = 0
    first_errors: list[tuple[str, str]] = field(default_factory=list)
    """The first few errors, for the summary (all of them are in the errors log)."""
    seconds: float = 0.0
    loaded: bool = True
    """Whether the model was loaded (a run with nothing left to caption loads none)."""
    output: str = ""
    errors_at: str = ""

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def fail(self, key: str, message: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 10:
            self.first_errors.append((key, message))

    def summary(self) -> str:
        lines = [f"captioned {self.done} images in {self.seconds:.1f} s "
                 f"({self.images_per_s:.2f} images/s); {self.skipped} already done; "
                 f"{self.errors} bad" + ("" if self.loaded else
                                         "; nothing to caption: the model was not loaded"),
                 f"  captions: {self.output}"]
        if self.errors:
            lines.append(f"  errors:   {self.errors_at} (tried again by the next run)")
            lines += [f"  bad: {k}: {v}" for k, v in self.first_errors]
            if self.errors > len(self.first_errors):
                lines.append(f"  ... and {self.errors - len(self.first_errors)} more")
        return "\n".join(lines)


def pending(folder: Path, sink: Sink) -> Iterator[str | Failure]:
    """The images of ``folder`` not done in ``sink``, and the directories that cannot be
    listed (as failures), streamed."""
    unlisted: list[Failure] = []
    for key in walk(folder, lambda rel, msg: unlisted.append(Failure(rel, msg))):
        yield from unlisted
        unlisted.clear()
        if not sink.done(key):
            yield key
    yield from unlisted


def count(folder: Path, sink: Sink) -> tuple[int, int]:
    """(images, images to caption): a first pass over the listing, for the progress bar's
    total and the ETA; memory O(1)."""
    images = todo = 0
    for key in walk(folder, lambda rel, msg: None):
        images += 1
        todo += not sink.done(key)
    return images, todo


async def caption_folder(engine: Engine, folder: Path, out: Path | None = None,
                         prompt: str | None = None, concurrency: int = 16,
                         progress: bool = True,
                         start: Callable[[], Awaitable[None]] | None = None, *,
                         sink: Sink | None = None, ask: CaptionAsk | None = None) -> CaptionRun:
    """Caption the images of ``folder`` not yet in ``sink`` (by default the format ``out``'s
    suffix names); ``start`` (the engine's load) runs once, when the first readable picture
    needs the model. ``prompt`` alone: asked of every image (a question, no task)."""
    if sink is None:
        sink = open_sink(infer_format(None, out), folder, out)
    if ask is None:
        ask = CaptionAsk(prompt=prompt, task="") if prompt else CaptionAsk()
    run = CaptionRun(loaded=start is None, output=sink.where, errors_at=sink.errors_where)
    await asyncio.to_thread(sink.open)
    try:
        await _caption(engine, folder, sink, ask, max(1, concurrency), progress, start, run)
    finally:
        await asyncio.to_thread(sink.close)
    return run


async def _caption(engine: Engine, folder: Path, sink: Sink, ask: CaptionAsk, concurrency: int,
                   progress: bool, start: Callable[[], Awaitable[None]] | None,
                   run: CaptionRun) -> None:
    images, todo = await asyncio.to_thread(count, folder, sink)
    run.skipped = images - todo
    bar = tqdm(total=todo, unit="img", desc="captioning", disable=not progress,
               dynamic_ncols=True)
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=concurrency)
    loading = asyncio.Lock()
    failing = 0
    model = str(engine.config.source or engine.name)

    def failed(key: str, message: str) -> None:
        sink.fail(Failure(key, message))
        run.fail(key, message)
        bar.set_postfix(errors=run.errors, refresh=False)

    async def feed() -> None:
        listing = iterate_in_thread(lambda: pending(folder, sink), None, threading.Event(),
                                    max_pending=concurrency)
        async for item in listing:
            if isinstance(item, Failure):
                failed(item.file_name, item.error)
            else:
                await queue.put(item)
        for _ in range(concurrency):
            await queue.put(None)

    async def one(key: str) -> None:
        nonlocal failing
        try:
            image = await asyncio.to_thread(read, folder / key)
        except Exception as exc:  # whatever is wrong with one file is that file's error
            failed(key, f"not a readable image: {exc}")
            return
        async with loading:  # the model loads when the first picture needs it
            if not run.loaded:
                assert start is not None
                await start()
                run.loaded = True
        began = time.perf_counter()
        try:
            text = await answer(engine, ask.request(image))
        except Exception as exc:  # one image's failure: recorded, tried again next run
            failing += 1
            failed(key, f"the model failed: {type(exc).__name__}: {exc}")
            if failing >= FAIL_LIMIT:
                raise CaptionError(f"the model failed on {failing} images in a row; the "
                                   f"last: {exc}") from exc
            return
        failing = 0
        sink.write(Caption(key, ask.text(text), model, ask.prompt, ask.task,
                           round(time.perf_counter() - began, 4)))
        run.done += 1
        bar.update(1)

    async def work() -> None:
        while (key := await queue.get()) is not None:
            await one(key)

    began = time.perf_counter()
    tasks = [asyncio.create_task(feed()), *(asyncio.create_task(work())
                                            for _ in range(concurrency))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        run.seconds = time.perf_counter() - began
        bar.close()


async def answer(engine: Engine, request: ModelRequest) -> str:
    """The answer's text; the engine's stream is closed when this ends, however it ends."""
    async with contextlib.aclosing(engine.stream(request)) as parts:
        return "".join([text async for text in text_only(parts)])
