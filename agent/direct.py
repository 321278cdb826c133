"""The handler behind a model name: a session opened as ``?model=NAME`` (or Gemini's
``models/NAME``), where NAME is a model rather than a profile, talks to that model directly.

A question goes to the model as one request: the question text, the newest frame, the audio
heard since the last question, the conversation. This is the request chat completions send
for the same name, so the three protocols give the same answer to the same input.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import numpy as np

from agent.config import ProfileConfig
from agent.engine import ModelRequest
from agent.handler import Handler, Question
from agent.media import AUDIO_RATE, Audio, Modality, Window
from agent.parts import Part

MAX_AUDIO_S = 30.0
"""Audio kept for the next question; older audio is dropped first."""


class DirectHandler(Handler):
    """Asked: the model's answer to the question, the newest frame and the audio since the last
    question. Live: silent (live responses come from a profile's handlers)."""

    name: ClassVar[str] = "model"
    modality: ClassVar[Modality] = "image"
    enabled_by_default: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audio: deque[Audio] = deque()
        self.audio_len = 0

    def feed(self, window: Window) -> None:
        if window.audio.size:
            self.audio.append(window.audio)
            self.audio_len += window.audio.size
            while self.audio_len > MAX_AUDIO_S * AUDIO_RATE and len(self.audio) > 1:
                self.audio_len -= self.audio.popleft().size
        return None

    async def answer(self, question: Question) -> AsyncIterator[Part]:
        image = await asyncio.to_thread(question.frame.image) if question.frame else None
        audio = np.concatenate(list(self.audio)) if self.audio else None
        self.audio.clear()
        self.audio_len = 0
        request = ModelRequest(prompt=question.text, instructions=question.instructions,
                               images=(image,) if image is not None else (), audio=audio,
                               history=question.history)
        async for part in self.ctx.stream(request, question.options):
            yield part


def model_profile(model: str) -> ProfileConfig:
    """The profile a model name stands for: the direct handler on that model."""
    return ProfileConfig(handlers=[DirectHandler.name], models={DirectHandler.name: model})
