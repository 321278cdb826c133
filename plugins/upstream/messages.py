"""A ``ModelRequest`` as OpenAI chat completions messages, media inline.

The chat is the one every checkpoint of ours reads (``agent.families.messages``: instructions,
few-shot examples, history or a session's timeline, then the question), with each picture as an
``image_url`` part (a JPEG data URL), a video as its frames (or one ``video_url`` part, an MP4
data URL, for upstreams that take it: vLLM, SGLang), and a sound as ``input_audio`` (WAV).
"""

from __future__ import annotations

import base64
import io
import json
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from agent import (
    AUDIO_RATE,
    RGB,
    Audio,
    ModelRequest,
    fit,
    float_to_pcm16,
    messages,
    subsample,
    wav_bytes,
)

Messages = list[dict[str, Any]]


def jpeg_url(image: RGB, max_pixels: int, quality: int = 90) -> str:
    out = io.BytesIO()
    Image.fromarray(fit(image, max_pixels)).save(out, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def image_part(image: RGB, max_pixels: int) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": jpeg_url(image, max_pixels)}}


def audio_part(audio: Audio) -> dict[str, Any]:
    """16 kHz mono float samples as a 16-bit WAV ``input_audio`` part."""
    wav = wav_bytes(float_to_pcm16(audio), AUDIO_RATE)
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def video_url(frames: list[RGB], fps: float, max_pixels: int) -> dict[str, Any]:
    """The frames as one H.264 MP4 (MPEG-4 part 2 where libx264 is missing), as a data URL."""
    import av
    from av.video.stream import VideoStream

    first = fit(frames[0], max_pixels)
    h, w = (first.shape[0] // 2) * 2, (first.shape[1] // 2) * 2  # yuv420p: even sides
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=max(1, round(fps)))
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            pixels = np.asarray(Image.fromarray(fit(frame, max_pixels)).resize((w, h)))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return {"type": "video_url", "video_url": {
        "url": "data:video/mp4;base64," + base64.b64encode(out.getvalue()).decode()}}


def own_media(request: ModelRequest, modalities: frozenset[str], max_pixels: int,
              video_as: str) -> Messages:
    """The request's own media as content parts, in the order the checkpoints get them."""
    parts = [image_part(i, max_pixels) for i in request.images if "image" in modalities]
    if request.video and "video" in modalities:
        frames = subsample(request.video)
        if video_as == "video_url":
            parts.append(video_url(frames, request.video_fps, max_pixels))
        else:
            parts += [image_part(f, max_pixels) for f in frames]
    if request.audio is not None and "audio" in modalities:
        parts.append(audio_part(request.audio))
    return parts


def chat(request: ModelRequest, modalities: frozenset[str], max_pixels: int,
         video_as: str = "frames") -> Messages:
    """The request as chat completions ``messages``."""
    shown = deque(_shown(request, max_pixels))
    out = []
    for message in messages(request, own_media(request, modalities, max_pixels, video_as)):
        message = dict(message)
        content = message.get("content")
        if isinstance(content, list):
            parts = list(_filled(content, shown))
            texts = [p["text"] for p in parts if p.get("type") == "text"]
            # text alone as a string: every upstream takes it (some take no part lists)
            message["content"] = "".join(texts) if len(texts) == len(parts) else parts
        if "tool_calls" in message:
            message["tool_calls"] = [
                {**call, "function": {**call["function"],
                                      "arguments": _as_text(call["function"]["arguments"])}}
                for call in message["tool_calls"]]
        if message["role"] == "tool":  # OpenAI's API takes no name on a tool message
            message.pop("name", None)
        out.append(message)
    return out


def _shown(request: ModelRequest, max_pixels: int) -> Iterator[dict[str, Any]]:
    """The media shown before the question, in the order the chat places them: few-shot
    examples' pictures, then the timeline's pictures and sounds."""
    for image, _ in request.examples:
        yield image_part(image, max_pixels)
    for entry in request.sequence:
        if entry.image is not None:
            yield image_part(entry.image, max_pixels)
        elif entry.audio is not None:
            yield audio_part(entry.audio)


def _filled(content: Messages, shown: deque[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Content with each placeholder (a picture or sound shown earlier: a few-shot example's,
    the timeline's) replaced by the media it stands for, in order."""
    for part in content:
        if part.get("type") in ("image", "audio") and set(part) == {"type"}:
            if shown:
                yield shown.popleft()
        else:
            yield part


def _as_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)
