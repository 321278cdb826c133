"""Faces in view: OpenCV's Haar cascade (shipped in opencv-python-headless < 5)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
from pydantic import Field

from agent import (
    Handler,
    ModelConfig,
    ModelRequest,
    Options,
    Question,
    ThreadedEngine,
    Window,
    hookimpl,
)


class HaarOptions(Options):
    """``models.NAME.options`` of a ``haar-faces`` model."""

    min_neighbors: int = Field(default=5, ge=0)
    """Detections that must overlap to count as a face (more: fewer false faces)."""


class HaarFaceEngine(ThreadedEngine):
    """Yields one JSON list of face boxes ``[x, y, w, h]`` per image, in pixels.

    OpenCV does not promise that one cascade serves two threads at once, so each worker
    thread gets its own."""

    kind = "haar-faces"
    options_model = HaarOptions
    parallel = True  # one cascade per worker thread, one worker per core

    def load(self) -> None:
        self.min_neighbors = HaarOptions.of(self.config.options).min_neighbors
        self.cascade()  # load once now: a missing cascade fails at start-up

    def cascade(self) -> Any:
        """This thread's classifier (loaded on first use)."""
        return self.per_thread(self._load_cascade)

    @staticmethod
    def _load_cascade() -> Any:
        import cv2

        cascades: str = cv2.data.haarcascades  # type: ignore[attr-defined]
        path = cascades + "haarcascade_frontalface_default.xml"
        found = cv2.CascadeClassifier(path)
        if found.empty():
            raise RuntimeError(f"cannot load {path}: opencv-python-headless 5 ships no "
                               "cascades, install 'opencv-python-headless<5'")
        return found

    def generate(self, request: ModelRequest, cancelled: threading.Event) -> Iterator[str]:
        import cv2

        cascade = self.cascade()
        for image in request.images:
            if cancelled.is_set():
                return
            gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
            scale = max(1.0, gray.shape[1] / 640)
            if scale > 1:
                gray = cv2.resize(gray, None, fx=1 / scale, fy=1 / scale)
            gray = cv2.equalizeHist(gray)
            found = cascade.detectMultiScale(
                gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(30, 30)
            )
            yield json.dumps([[round(float(v) * scale) for v in box] for box in found])


async def count_faces(handler: Handler, image: Any) -> int:
    count = 0
    async for boxes in handler.ctx.text(ModelRequest(images=(image,))):
        count += len(json.loads(boxes))
    return count


def describe(count: int) -> str:
    if count == 0:
        return "No face in view."
    return f"{count} face{'s' if count > 1 else ''} in view."


class FacesHandler(Handler):
    """Live: speaks when a face appears, leaves, or the number of faces changes."""

    name = "faces"
    options_model = Options  # none
    modality = "image"
    default_model = "faces"
    gated = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last = 0

    async def respond(self, work: Window) -> AsyncIterator[str]:
        assert work.frame is not None
        count = await count_faces(self, await asyncio.to_thread(work.frame.image))
        if count != self.last:
            self.last = count
            yield describe(count)

    async def answer(self, question: Question) -> AsyncIterator[str]:
        if question.frame is not None:
            yield describe(await count_faces(self, await asyncio.to_thread(question.frame.image)))


@hookimpl
def register_engines(register: Any) -> None:
    register(HaarFaceEngine)


@hookimpl
def register_models(register: Any) -> None:
    register("faces", ModelConfig(engine=HaarFaceEngine.kind))


@hookimpl
def register_handlers(register: Any) -> None:
    register(FacesHandler)
