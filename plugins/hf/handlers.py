"""Handlers for multimodal LLMs: image (newest frame), video (sliding window), audio (utterances
or fixed-length chunks). They work with any model whose family takes that modality."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent import (
    AUDIO_RATE,
    RGB,
    Frame,
    Handler,
    ModelRequest,
    Part,
    Question,
    Segmenter,
    Timeline,
    Utterance,
    Window,
    content_key,
    frame_key,
)

DESCRIBE = "Describe what you see in one short sentence."
SUMMARIZE = "Summarize what happened in these frames in one short sentence."
LISTEN = "What do you hear? Transcribe any speech."


class _LLMHandler(Handler):
    enabled_by_default = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.ctx.options
        self.prompt = str(opts.get("prompt", self.default_prompt()))
        # a prompt of one's own is a question; with none, the handler's task (a caption)
        self.task = str(opts.get("task", "" if "prompt" in opts else self.default_task()))
        self.examples = tuple(load_examples(opts.get("few_shot", [])))

    def default_prompt(self) -> str:
        return DESCRIBE

    def default_task(self) -> str:
        """What prompt-style checkpoints are asked when no one asks a question (``task``)."""
        return ""

    def request(self, prompt: str, question: Question | None = None,
                **media: Any) -> ModelRequest:
        return ModelRequest(
            prompt=prompt, task=self.task if prompt == self.prompt else "",
            examples=self.examples,
            instructions=question.instructions if question else "",
            history=question.history if question else (), **media)

    async def stream(self, request: ModelRequest,
                     question: Question | None = None) -> AsyncIterator[Part]:
        """The model's answer parts, under the question's response options if asked."""
        async for part in self.ctx.stream(request, question.options if question else None):
            yield part

    def memory(self, question: Question | None = None, takes: str = "image") -> Timeline | None:
        """The session's timeline of this handler's model, when this call renders from it:
        memory is on, the model reads a conversation of ``takes`` parts, and a question is in
        band with no function calls in its history (those are prompted as before)."""
        if question is not None and (not question.memory or any(
                t.role == "tool" or t.tool_calls for t in question.history)):
            return None
        model, pool = self.ctx.model, self.ctx.pool
        known = pool.modalities(model) if model is not None else None
        if model is None or pool.converses(model) is False or (
                known is not None and takes not in known):
            return None
        return self.ctx.session.memory.timeline(model)

    async def remembered(self, timeline: Timeline, prompt: str,
                         question: Question | None = None) -> AsyncIterator[Part]:
        """The model's answer to ``prompt`` after the whole timeline, which keeps the
        exchange; the instructions are the question's, or live, the session's."""
        render = timeline.render(prompt)
        request = ModelRequest(
            instructions=question.instructions if question else self.ctx.session.instructions,
            examples=self.examples, sequence=render.entries)
        async for part in timeline.exchange(render, prompt, self.stream(request, question)):
            yield part


async def look(timeline: Timeline, frames: list[Frame]) -> None:
    """Add the frames newer than the timeline's newest (decoded and hashed off the loop; kept
    writable, so engines need not copy them at every call)."""
    new = [f for f in frames if f.ts > timeline.newest("image")]
    seen = await asyncio.to_thread(
        lambda: [(f.ts, np.array(f.image()), frame_key(f)) for f in new])
    for ts, image, key in seen:
        timeline.see(ts, image, key)


async def hear(timeline: Timeline, utterance: Utterance) -> None:
    """Add an utterance, unless the timeline has it (hashed off the loop)."""
    if utterance.start > timeline.newest("audio"):
        key = await asyncio.to_thread(content_key, utterance.audio)
        timeline.hear(utterance.start, utterance.audio, key)


class DescribeHandler(_LLMHandler):
    """Live: describes the newest frame of each window. Asked: answers about the newest frame."""

    name = "describe"
    modality = "image"
    gated = True

    def default_task(self) -> str:
        return "caption"

    async def respond(self, work: Window) -> AsyncIterator[Part]:
        assert work.frame is not None
        if (timeline := self.memory()) is not None:
            await look(timeline, [work.frame])
            async for part in self.remembered(timeline, self.prompt):
                yield part
            return
        image = await asyncio.to_thread(work.frame.image)
        async for part in self.stream(self.request(self.prompt, images=(image,))):
            yield part

    async def answer(self, question: Question) -> AsyncIterator[Part]:
        if question.frame is None:
            return
        if (timeline := self.memory(question)) is not None:
            await look(timeline, [question.frame])
            async for part in self.remembered(timeline, question.prompt(self.prompt), question):
                yield part
            return
        image = await asyncio.to_thread(question.frame.image)
        req = self.request(question.prompt(self.prompt), question, images=(image,))
        async for part in self.stream(req, question):
            yield part


class VideoHandler(_LLMHandler):
    """A sliding window of sampled frames (``video_window_s``, at most 64, with fps metadata).
    Live: summarizes every ``every_s`` seconds (default: the window length). Asked: answers
    about what happened over the window."""

    name = "video"
    modality = "video"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: deque[tuple[float, Frame]] = deque(maxlen=64)
        self.window_s = float(self.ctx.options.get("window_s", 8.0))
        self.every_s = float(self.ctx.options.get("every_s", self.window_s))
        self._next = self.every_s

    def default_prompt(self) -> str:
        return SUMMARIZE

    def feed(self, window: Window) -> Window | None:
        if window.frame is None:
            return None
        self.frames.append((window.end, window.frame))
        while self.frames and self.frames[0][0] <= window.end - self.window_s:
            self.frames.popleft()
        if window.end + 1e-6 < self._next:
            return None
        self._next = window.end + self.every_s
        return Window(window.index, self.frames[0][0] - (window.end - window.start), window.end,
                      window.frame)

    async def _video(self, frames: list[Frame]) -> tuple[tuple[RGB, ...], float]:
        images = await asyncio.to_thread(lambda: tuple(f.image() for f in frames))
        span = max(1e-3, frames[-1].ts - frames[0].ts) if len(frames) > 1 else 1.0
        fps = (len(frames) - 1) / span if len(frames) > 1 else 1.0
        return images, fps

    async def respond(self, work: Window) -> AsyncIterator[Part]:
        if (timeline := self.memory()) is not None:  # the frames as pictures, in order
            await look(timeline, [f for _, f in self.frames])
            async for part in self.remembered(timeline, self.prompt):
                yield part
            return
        video, fps = await self._video([f for _, f in self.frames])
        async for part in self.stream(self.request(self.prompt, video=video, video_fps=fps)):
            yield part

    async def answer(self, question: Question) -> AsyncIterator[Part]:
        frames = list(question.frames) or [f for _, f in self.frames]
        if not frames:
            return
        if (timeline := self.memory(question)) is not None:
            await look(timeline, frames)
            async for part in self.remembered(timeline, question.prompt(self.prompt), question):
                yield part
            return
        video, fps = await self._video(frames)
        req = self.request(question.prompt(self.prompt), question, video=video, video_fps=fps)
        async for part in self.stream(req, question):
            yield part


class ListenHandler(_LLMHandler):
    """Audio for audio-language models: one response per utterance found by voice activity,
    or, with option ``chunk_s``, per fixed-length chunk."""

    name = "listen"
    modality = "audio"
    feed_off_loop = True  # the VAD runs for every 32 ms of audio
    hears_on_arrival = True  # an utterance ends when its silence is heard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        chunk = self.ctx.options.get("chunk_s")
        self.chunk_s = float(chunk) if chunk else None
        self.segmenter = None if self.chunk_s else Segmenter(
            min_silence_s=float(self.ctx.options.get("min_silence_s", 0.5)),
            stream=self.ctx.session_id)  # the session's one VAD pass
        self._buffer: list[np.ndarray] = []
        self._start: float | None = None
        self.last: Utterance | None = None
        self.recent: deque[np.ndarray] = deque(maxlen=10)  # windows: what a question hears
        # when no utterance was found

    def default_prompt(self) -> str:
        return LISTEN

    def hear(self, pieces: list[tuple[np.ndarray, float]]) -> Utterance | None:
        if self.segmenter is None:  # fixed chunks: cut by the windows
            return None
        return self._ended(self.segmenter.hear(pieces))

    def feed(self, window: Window) -> Utterance | None:
        if window.audio.size:
            self.recent.append(window.audio)
        t = window.end - window.audio.size / AUDIO_RATE
        if self.segmenter is None:
            return self._ended(self._chunks(window, t))
        # the audio was heard as it came (hear); the stream's end ends an utterance
        return self._ended(self.segmenter.finish(window.end)) if window.final else None

    def _ended(self, done: list[Utterance]) -> Utterance | None:
        if not done:
            return None
        self.last = Utterance.joined(done)
        return self.last

    def clear_audio(self) -> None:
        if self.segmenter is not None:
            self.segmenter.reset()
        self._buffer, self._start = [], None
        self.recent.clear()

    def _chunks(self, window: Window, t: float) -> list[Utterance]:
        if self._start is None:
            self._start = t
        self._buffer.append(window.audio)
        audio = np.concatenate(self._buffer)
        assert self.chunk_s is not None
        if audio.size < self.chunk_s * AUDIO_RATE and not (window.final and audio.size):
            return []
        self._buffer, start, self._start = [], self._start, None
        return [Utterance(start, start + audio.size / AUDIO_RATE, audio)]

    async def respond(self, work: Utterance) -> AsyncIterator[Part]:
        if (timeline := self.memory(takes="audio")) is not None:
            await hear(timeline, work)
            async for part in self.remembered(timeline, self.prompt):
                yield part
            return
        async for part in self.stream(self.request(self.prompt, audio=work.audio)):
            yield part

    async def answer(self, question: Question) -> AsyncIterator[Part]:
        timeline = self.memory(question, takes="audio")
        if timeline is not None and self.last is not None:  # what was heard last, and before
            await hear(timeline, self.last)
            async for part in self.remembered(timeline, question.prompt(self.prompt), question):
                yield part
            return
        if self.last is not None:
            audio = self.last.audio
        elif self.recent:
            audio = np.concatenate(list(self.recent))
        else:
            return
        req = self.request(question.prompt(self.prompt), question, audio=audio)
        async for part in self.stream(req, question):
            yield part


def load_examples(items: list[dict[str, str]]) -> list[tuple[RGB, str]]:
    """Few-shot examples from config: ``[{image: PATH, answer: TEXT}, ...]``."""
    out = []
    for item in items:
        with Image.open(Path(item["image"]).expanduser()) as img:
            out.append((np.asarray(img.convert("RGB")), str(item["answer"])))
    return out
