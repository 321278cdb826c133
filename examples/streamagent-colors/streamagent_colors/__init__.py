"""Names the dominant colour of each sampled frame, and speaks when it changes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from agent import Handler, ModelConfig, ModelRequest, Question, ThreadedEngine, Window, hookimpl

PALETTE = {
    "black": (0, 0, 0), "white": (255, 255, 255), "red": (220, 30, 30),
    "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 30), "purple": (130, 50, 160), "grey": (128, 128, 128),
}


class DominantColorEngine(ThreadedEngine):
    """A "model" that names the colour nearest to the median pixel of each image."""

    kind = "dominant-color"

    def generate(self, request: ModelRequest, cancelled: threading.Event) -> Iterator[str]:
        names, values = list(PALETTE), np.array(list(PALETTE.values()), np.float32)
        for image in request.images:
            median = np.median(image.reshape(-1, 3)[::7], axis=0)
            yield names[int(np.argmin(((values - median) ** 2).sum(axis=1)))]


class ColorsHandler(Handler):
    name = "colors"
    modality = "image"
    default_model = "colors"
    enabled_by_default = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last: str | None = None

    async def _name(self, frame_image: Any) -> str:
        return "".join([c async for c in self.ctx.text(ModelRequest(images=(frame_image,)))])

    async def respond(self, work: Window) -> AsyncIterator[str]:
        assert work.frame is not None
        color = await self._name(await asyncio.to_thread(work.frame.image))
        if color != self.last:
            self.last = color
            yield f"Mostly {color}."

    async def answer(self, question: Question) -> AsyncIterator[str]:
        if question.frame is not None:
            yield f"Mostly {await self._name(await asyncio.to_thread(question.frame.image))}."


@hookimpl
def register_engines(register: Any) -> None:
    register(DominantColorEngine)


@hookimpl
def register_models(register: Any) -> None:
    register("colors", ModelConfig(engine="dominant-color"))


@hookimpl
def register_handlers(register: Any) -> None:
    register(ColorsHandler)
