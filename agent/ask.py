"""``streamagent ask FILE... QUESTION``: one question about pictures, a video or a recording,
answered by a model in this process (no server), the way a chat completions request to the
default profile is (``agent.oneshot.profile_answer``)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import av

from agent import media_files
from agent.engine import ModelRequest
from agent.errors import InvalidMedia
from agent.media import RGB, Audio, sniff_image, why
from agent.oneshot import profile_answer
from agent.parts import Part
from agent.runtime import Runtime


def request_for(files: list[Path], question: str, limits: media_files.Limits,
                max_tokens: int | None = None) -> ModelRequest:
    """The question with its files: pictures (JPEG, PNG, WebP), at most one video (its frames
    at 1 fps, and its sound) and one recording, within the server's per-file limits."""
    images: list[RGB] = []
    video: tuple[RGB, ...] = ()
    audio: Audio | None = None
    for path in files:
        data, param = path.read_bytes(), str(path)
        kinds = _contents(data, param)
        if "image" in kinds:
            images.append(media_files.image(data, param, limits))
        if "video" in kinds:
            if video:
                raise InvalidMedia("one video at most", param=param)
            video = media_files.video(data, param, limits)
        if "audio" in kinds:
            if audio is not None:
                raise InvalidMedia("one recording at most (a video's sound counts)",
                                   param=param)
            audio = media_files.audio(data, param, limits)
    options = {} if max_tokens is None else {"max_new_tokens": max_tokens}
    return ModelRequest(prompt=question, images=tuple(images), video=video, audio=audio,
                        options=options, session="ask")


async def ask(runtime: Runtime, request: ModelRequest) -> AsyncIterator[Part]:
    """Load the models, stream the default profile's answer to ``request``, close them."""
    await runtime.start()
    try:
        async for part in profile_answer(runtime, runtime.profile(None), request):
            yield part
    finally:
        await runtime.pool.close()


def _contents(data: bytes, param: str) -> set[str]:
    """What a file holds: ``{"image"}``, or its streams (``video``, ``audio``)."""
    try:
        sniff_image(data)
        return {"image"}
    except InvalidMedia:
        pass
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            kinds = {kind for kind in ("video", "audio")
                     if getattr(container.streams, kind)}
    except av.error.FFmpegError as exc:
        raise InvalidMedia("neither a picture (JPEG, PNG, WebP) nor a video or recording "
                           f"PyAV reads ({why(exc)})", param=param) from None
    if not kinds:
        raise InvalidMedia("no picture, video or sound in it", param=param)
    return kinds
