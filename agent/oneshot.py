"""A profile's answer to one whole request (chat completions), the way a realtime session of that
profile answers ``response.create``: the same handlers see the same windows, and each adds its
part to the answer, in the same order and words."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import replace

import numpy as np

from agent.answers import answers
from agent.config import ProfileConfig
from agent.engine import ModelRequest
from agent.handler import Handler, Question, ResponseOptions, SessionOptions
from agent.ids import new_id
from agent.live import MAX_RECENT_FRAMES, Arrived, feed_safely, hear_safely
from agent.media import AUDIO_RATE, Frame, Window
from agent.parts import Part
from agent.runtime import Runtime
from agent.sampler import Sampler


async def profile_answer(runtime: Runtime, profile: ProfileConfig, request: ModelRequest,
                         speaker: tuple[str, str] | None = None
                         ) -> AsyncGenerator[Part, None]:
    """Stream the profile's answer to ``request`` (its text, media and conversation). Every
    model call made for it is capped at the request's ``max_new_tokens``, and their ``Usage``
    parts come with the answer, as a realtime response's do. ``speaker``: a model's own voice
    (``ResponseOptions.speaker``)."""
    session_id = new_id("chat")
    cap = request.options.get("max_new_tokens")
    options = SessionOptions(ResponseOptions(
        max_new_tokens=None if cap is None else int(cap), tools=request.tools,
        tool_choice=request.tool_choice, parallel_tool_calls=request.parallel_tool_calls,
        speaker=speaker))
    handlers = [runtime.make_handler(name, session_id, profile, options)
                for name in runtime.default_handlers(profile)]
    question = await asyncio.to_thread(feed, handlers, profile, request)
    async for part in answers(handlers, replace(question, options=options.response)):
        yield part


def feed(handlers: list[Handler], profile: ProfileConfig, request: ModelRequest) -> Question:
    """Cut the request's media into the profile's windows, feed every handler each window in
    order (as a live session does), and return the question a session would ask. Video frames
    come at their times, audio from time 0, and images last, after both: the newest frame is
    the last image. CPU work (voice activity): run in a thread."""
    sampler = Sampler(1.0 / profile.sample_fps, clock=lambda: 0.0)
    recent: deque[Frame] = deque(maxlen=max(1, min(
        MAX_RECENT_FRAMES, round(profile.video_window_s * profile.sample_fps))))
    last: Window | None = None
    for window in _windows(sampler, request):
        last = window
        if window.frame is not None:
            recent.append(window.frame)
        heard = Arrived(window.audio, window.end - window.audio.size / AUDIO_RATE)
        for handler in handlers:
            if handler.hears_on_arrival and heard.audio.size:
                hear_safely(handler, [heard])  # as a session's audio arrives: first
            feed_safely(handler, window)
    frames = tuple(recent)
    return Question(text=request.prompt, instructions=request.instructions,
                    frame=frames[-1] if frames else None, frames=frames, window=last,
                    history=request.history)


def _windows(sampler: Sampler, request: ModelRequest) -> list[Window]:
    fps = request.video_fps or 1.0
    media: list[tuple[float, Frame | np.ndarray]] = [
        (i / fps, Frame.of_image(image, i / fps)) for i, image in enumerate(request.video)]
    audio = request.audio if request.audio is not None else np.zeros(0, np.float32)
    step = int(sampler.window_s * AUDIO_RATE) or AUDIO_RATE
    media += [(i / AUDIO_RATE, audio[i:i + step]) for i in range(0, audio.size, step)]
    end = max(len(request.video) / fps, audio.size / AUDIO_RATE)
    media += [(end, Frame.of_image(image, end)) for image in request.images]
    windows: list[Window] = []
    for ts, item in sorted(media, key=lambda m: m[0]):
        windows += (sampler.add_frame(item) if isinstance(item, Frame)
                    else sampler.add_audio(item, ts))
    return windows + sampler.flush(final=True)
