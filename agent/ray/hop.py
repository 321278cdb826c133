"""What crosses the Ray hop between the gateway and a model replica, kept small.

- Pictures: downscaled at the gateway to the model's pixel budget (its ``max_pixels``, which
  the engine would apply anyway), then JPEG-encoded (``PackedRequest``); the replica decodes
  them before the engine sees the request. Eight 720p frames are 22 MB as raw RGB and a few
  hundred KB packed.
- Answer parts: the replica sends them in batches (``batches``): the first part at once, then
  the text that arrived every ``interval_s`` joined, so one Ray streaming item carries many
  tokens; other parts (tool calls, audio, usage) go at once, in order, with the text before
  them (the last text and the engine's ``Usage`` share an item).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from agent.engine import ModelRequest
from agent.media import RGB
from agent.parts import Part, TextDelta

MIN_SIDE = 28
COALESCE_QUEUE = 256


@dataclass(frozen=True, slots=True)
class PackedRequest:
    """A ModelRequest whose pictures travel as JPEG bytes."""

    request: ModelRequest
    """The request without its pictures."""
    images: tuple[bytes, ...] = ()
    video: tuple[bytes, ...] = ()
    examples: tuple[tuple[bytes, str], ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(map(len, (*self.images, *self.video, *(b for b, _ in self.examples))))


def fit(image: RGB, max_pixels: int | None) -> RGB:
    """Downscale to at most ``max_pixels`` pixels, keeping the aspect ratio (the engines'
    rule: an image already within the budget is left as it is)."""
    h, w = image.shape[:2]
    if max_pixels is None or h * w <= max_pixels:
        return image
    scale = (max_pixels / (h * w)) ** 0.5
    size = (max(MIN_SIDE, int(w * scale)), max(MIN_SIDE, int(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def _encode(image: RGB, max_pixels: int | None, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(fit(image, max_pixels)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _decode(data: bytes) -> RGB:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def pack(request: ModelRequest, max_pixels: int | None, quality: int) -> PackedRequest:
    """CPU work: call it off the event loop."""
    def enc(image: RGB) -> bytes:
        return _encode(image, max_pixels, quality)

    bare = dataclasses.replace(request, images=(), video=(), examples=())
    return PackedRequest(bare, tuple(map(enc, request.images)), tuple(map(enc, request.video)),
                         tuple((enc(img), text) for img, text in request.examples))


def unpack(packed: PackedRequest) -> ModelRequest:
    """CPU work: call it off the event loop."""
    return dataclasses.replace(
        packed.request, images=tuple(map(_decode, packed.images)),
        video=tuple(map(_decode, packed.video)),
        examples=tuple((_decode(b), text) for b, text in packed.examples))


def has_pictures(request: ModelRequest) -> bool:
    return bool(request.images or request.video or request.examples)


async def coalesce(stream: AsyncIterator[Part], interval_s: float,
                   ) -> AsyncGenerator[Part, None]:
    """``batches``, one part at a time."""
    async with contextlib.aclosing(batches(stream, interval_s)) as items:
        async for batch in items:
            for part in batch:
                yield part


async def batches(stream: AsyncIterator[Part], interval_s: float,
                  ) -> AsyncGenerator[tuple[Part, ...], None]:
    """What one Ray streaming item carries: the first part at once (with whatever is already on
    its way: a one-token answer and its ``Usage`` are one item), then the text that arrived in
    each ``interval_s``, joined into one ``TextDelta``; another part goes at once, with the text
    before it (so the last text and the engine's ``Usage`` share an item).

    Closing this closes ``stream`` (a pump task reads it; cancelling the task closes it)."""
    if interval_s <= 0:
        async for part in stream:
            yield (part,)
        return
    queue: asyncio.Queue[tuple[bool, Part | BaseException | None]] = \
        asyncio.Queue(COALESCE_QUEUE)

    async def pump() -> None:
        try:
            async for part in stream:
                await queue.put((False, part))
            await queue.put((True, None))
        except Exception as exc:
            await queue.put((True, exc))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    task = asyncio.create_task(pump(), name="coalesce")
    loop = asyncio.get_running_loop()

    def text(texts: list[str]) -> tuple[Part, ...]:
        joined = "".join(texts)
        texts.clear()
        return (TextDelta(joined),) if joined else ()

    try:
        texts: list[str] = []
        first, deadline = True, 0.0
        while True:
            try:
                done, item = await asyncio.wait_for(
                    queue.get(), None if not texts else max(0.0, deadline - loop.time()))
            except TimeoutError:
                yield text(texts)
                continue
            if first and not done:  # at once, with what is already on its way
                first = False
                ready: list[Any] = [item]
                await asyncio.sleep(0)
                while not done and not queue.empty():
                    done, item = queue.get_nowait()
                    if not done:
                        ready.append(item)
                yield merged(ready)
                if not done:
                    continue
            if done:
                if texts:
                    yield text(texts)
                if isinstance(item, BaseException):
                    raise item
                return
            assert item is not None and not isinstance(item, BaseException)
            if not isinstance(item, TextDelta):
                yield (*text(texts), item)
                continue
            if not texts:
                deadline = loop.time() + interval_s
            texts.append(item.text)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def merged(parts: list[Part]) -> tuple[Part, ...]:
    """``parts`` with each run of text joined into one ``TextDelta``."""
    out: list[Part] = []
    for part in parts:
        if isinstance(part, TextDelta) and out and isinstance(out[-1], TextDelta):
            out[-1] = TextDelta(out[-1].text + part.text)
        else:
            out.append(part)
    return tuple(out)
