"""Worst-case memory of one chat completions request: the largest request the default limits
admit (every image at the pixel limit, the longest and widest video, the longest audio),
decoded by the same code the endpoint runs. Prints RSS before, the peak, and after.

    PYTHONPATH=. .venv/bin/python -m benchmarks.chat_memory
"""

from __future__ import annotations

import base64
import gc
import io
import resource
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from agent.config import ServerConfig
from agent.protocols.chat.request import Builder, ChatRequest


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def png(side: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (seed * 30 % 255, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


def video(path: Path, width: int, height: int, seconds: int) -> bytes:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=2)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * 2):
            img = np.full((height, width, 3), i % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 2)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path.read_bytes()


def audio(path: Path, seconds: float, rate: int) -> bytes:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        step = stream.codec_context.frame_size or 1024
        t = np.arange(step) / rate
        for start in range(0, int(seconds * rate), step):
            chunk = (0.1 * np.sin(2 * np.pi * 440 * (t + start / rate))).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path.read_bytes()


def main() -> None:
    cfg = ServerConfig()
    side = int(cfg.max_image_pixels ** 0.5)
    with tempfile.TemporaryDirectory() as d:
        clip = video(Path(d, "v.mp4"), 1280, 720, int(cfg.max_video_s))
        sound = audio(Path(d, "a.m4a"), cfg.max_audio_s, cfg.max_audio_rate)
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," +
                                                 base64.b64encode(png(side, i)).decode()}}
             for i in range(cfg.max_request_images)]
    parts += [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64," +
                                                  base64.b64encode(clip).decode()}},
              {"type": "input_audio", "input_audio": {"data": base64.b64encode(sound).decode(),
                                                      "format": "m4a"}},
              {"type": "text", "text": "x" * cfg.max_request_text_chars}]
    body = ChatRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": parts}]})
    size = sum(len(str(p)) for p in parts)
    build = Builder(cfg)
    before = rss_mib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    request = build(body)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    held = sum(i.nbytes for i in request.images) + sum(f.nbytes for f in request.video) + (
        request.audio.nbytes if request.audio is not None else 0)
    print(f"request body {size / 2**20:.1f} MiB: {len(request.images)} images "
          f"{side}x{side}, video {len(request.video)} frames 1280x720, audio "
          f"{request.audio.size / 16000 if request.audio is not None else 0:.0f} s")
    print(f"decoded arrays held: {held / 2**20:.0f} MiB")
    after = rss_mib()
    del request
    gc.collect()
    print(f"RSS before {before:.0f} MiB, with the request {after:.0f} MiB (+{after - before:.0f}),"
          f" once freed {rss_mib():.0f} MiB; peak RSS {peak_before:.0f} -> {peak:.0f} MiB "
          f"(+{peak - peak_before:.0f})")


if __name__ == "__main__":
    main()
