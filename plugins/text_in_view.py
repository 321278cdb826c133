"""Text in view: reads the newest frame with RapidOCR (PP-OCR models inside the wheel)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

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


class RapidOCROptions(Options):
    """``models.NAME.options`` of a ``rapidocr`` model."""

    min_score: float = Field(default=0.5, ge=0, le=1)
    """Lines read with less confidence are dropped."""
    det_limit_side_len: int = Field(default=480, ge=32)
    """Detection scales the frame's longer side (``max``) or shorter side (``min``) to this."""
    det_limit_type: Literal["max", "min"] = "max"
    use_cls: bool = False
    """The text-direction classifier (only for upside-down text)."""
    threads: int = Field(default=1, ge=-1)
    """onnxruntime threads per RapidOCR instance (one instance per worker thread); -1 or 0:
    onnxruntime's own choice, every core (RapidOCR's stock setting, which the capacity
    benchmark's baseline measures)."""


class RapidOCREngine(ThreadedEngine):
    """Yields one line of text per line read, top to bottom.

    Options, tuned for live 640x480 frames (each halves the time per frame or better; figures in
    docs/performance.md): ``min_score`` (0.5); ``det_limit_side_len`` (480) with
    ``det_limit_type`` (``max``: scale the longer side down to it, never up; RapidOCR's own
    default, 736 / ``min``, upscales a 640x480 frame to 981x736); ``use_cls`` (false: the
    text-direction classifier only matters for text upside down); ``threads`` (1: onnxruntime
    threads per instance). Each worker thread gets its own RapidOCR instance, so an engine
    served by N worker threads reads N frames at once, one core each.
    """

    kind = "rapidocr"
    options_model = RapidOCROptions
    parallel = True  # one RapidOCR per worker thread, one worker per core

    def load(self) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:  # pragma: no cover - a dependency of streamagent
            raise RuntimeError("the rapidocr engine needs: pip install 'rapidocr>=3'") from exc
        opts = RapidOCROptions.of(self.config.options)
        self.min_score = opts.min_score
        self.params = {
            "Global.log_level": "warning",
            "Global.use_cls": opts.use_cls,
            "Det.limit_side_len": opts.det_limit_side_len,
            "Det.limit_type": opts.det_limit_type,
            "EngineConfig.onnxruntime.intra_op_num_threads": opts.threads,
        }
        self._make = RapidOCR
        self.reader()  # load once now: a broken install fails at start-up

    def reader(self) -> Any:
        """This thread's RapidOCR instance (created on first use)."""
        return self.per_thread(lambda: self._make(params=self.params))

    def generate(self, request: ModelRequest, cancelled: threading.Event) -> Iterator[str]:
        ocr = self.reader()
        for image in request.images:
            if cancelled.is_set():
                return
            result: Any = ocr(np.ascontiguousarray(_padded(image)[:, :, ::-1]))  # it wants BGR
            for text, score in zip(result.txts or (), result.scores or (), strict=False):
                if score >= self.min_score and text.strip():
                    yield text.strip() + "\n"


def _padded(image: Any, ratio: int = 15) -> Any:
    """A thin strip padded with white to at most ``ratio`` to 1: RapidOCR scales the longer side
    down first, and fails once the shorter one rounds to 0 pixels."""
    h, w = image.shape[:2]
    ph, pw = max(h, -(-w // ratio)), max(w, -(-h // ratio))
    if (ph, pw) == (h, w):
        return image
    out = np.full((ph, pw, *image.shape[2:]), 255, image.dtype)
    out[:h, :w] = image
    return out


READ = "Read the text in the picture, line by line. Write only the text."


async def read_text(handler: Handler, frame_image: Any) -> list[str]:
    """The lines its model reads: RapidOCR's, or an LLM's asked to read (a prompt-style one
    by its task: Florence-2's ``<OCR>``, PaliGemma's ``ocr``)."""
    request = ModelRequest(prompt=READ, task="ocr", images=(frame_image,))
    text = "".join([piece async for piece in handler.ctx.text(request)])
    return [line.strip() for line in text.splitlines() if line.strip()]


class TextInViewHandler(Handler):
    """Live: says the text in view whenever it changes. Asked: says what text is in view."""

    name = "text_in_view"
    options_model = Options  # none
    modality = "image"
    default_model = "ocr"
    gated = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last: tuple[str, ...] = ()

    async def respond(self, work: Window) -> AsyncIterator[str]:
        assert work.frame is not None
        image = await asyncio.to_thread(work.frame.image)
        lines = tuple(await read_text(self, image))
        if not lines or _norm(lines) == _norm(self.last):
            self.last = lines
            return
        self.last = lines
        for i, line in enumerate(lines):
            yield line if i == 0 else "\n" + line

    async def answer(self, question: Question) -> AsyncIterator[str]:
        if question.frame is None:
            return
        image = await asyncio.to_thread(question.frame.image)
        lines = await read_text(self, image)
        yield "Text in view: " + " / ".join(lines) if lines else "I see no text."


def _norm(lines: tuple[str, ...]) -> str:
    return " ".join(" ".join(lines).lower().split())


@hookimpl
def register_engines(register: Any) -> None:
    register(RapidOCREngine)


@hookimpl
def register_models(register: Any) -> None:
    register("ocr", ModelConfig(engine=RapidOCREngine.kind))


@hookimpl
def register_handlers(register: Any) -> None:
    register(TextInViewHandler)
