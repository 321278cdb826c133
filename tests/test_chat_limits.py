"""Chat completions bound every input before decoding it: counts, pixels, lengths, rates and
text, each a config field named in the error; and the concurrency limit holds when requests
arrive together."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from agent.audio import wav_bytes
from agent.testing import FakeEngine, data_url, fake_runtime, jpeg_bytes
from agent.uvicorn_server import running


def video_bytes(path: Path, size: tuple[int, int], seconds: int, fps: int = 1) -> bytes:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        black = np.zeros((size[1], size[0], 3), np.uint8)
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(black, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path.read_bytes()


def silent_wav(seconds: float, rate: int) -> bytes:
    return wav_bytes(np.zeros(int(seconds * rate), np.int16).tobytes(), rate)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and then breaks off: decoding it fails, so a
    limit error (not a decoding error) shows the header was read first."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk +
            struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x10IDAT" + b"\x00" * 4)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ask(*parts: dict[str, Any], text: str = "what?") -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": [
        *parts, {"type": "text", "text": text}]}]}


def image(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data, "image/png")}}


def video(data: bytes) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + b64(data)}}


def audio(data: bytes) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": "wav"}}


LIMITS = {"max_request_images": 2, "max_image_pixels": 640 * 480, "max_video_pixels": 320 * 240,
          "max_video_s": 30.0, "max_video_frames": 4, "max_audio_s": 5.0,
          "max_audio_rate": 24000, "max_request_text_chars": 1000}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("limits")
    return {"long": video_bytes(d / "long.mp4", (32, 32), 60),
            "wide": video_bytes(d / "wide.mp4", (640, 480), 1),
            "ten": video_bytes(d / "ten.mp4", (32, 32), 10)}


@pytest.mark.parametrize(("case", "field"), [
    ("three images", "max_request_images"),
    ("big image header", "max_image_pixels"),
    ("two videos", "max_request_videos"),
    ("long video", "max_video_s"),
    ("wide video", "max_video_pixels"),
    ("two audios", "max_request_audios"),
    ("long audio", "max_audio_s"),
    ("fast audio", "max_audio_rate"),
    ("much text", "max_request_text_chars"),
])
async def test_each_limit_refuses_before_decoding(media: dict[str, bytes], case: str,
                                                  field: str) -> None:
    junk = {"type": "image_url", "image_url": {"url": data_url(b"not decoded")}}
    body = {
        "three images": ask(junk, junk, junk),  # junk: counted before any decoding
        "big image header": ask(image(png_header_only(5000, 5000))),
        "two videos": ask(video(b"junk"), video(b"junk")),
        "long video": ask(video(media["long"])),
        "wide video": ask(video(media["wide"])),
        "two audios": ask(audio(b"junk"), audio(b"junk")),
        "long audio": ask(audio(silent_wav(6.0, 16000))),
        "fast audio": ask(audio(silent_wav(0.5, 48000))),
        "much text": ask(text="x" * 1001),
    }[case]
    runtime = fake_runtime()
    for key, value in LIMITS.items():
        setattr(runtime.config.server, key, value)
    async with running(runtime) as address, httpx.AsyncClient(base_url=address.http) as http:
        r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "limit_exceeded" and f"server.{field}" in err["message"]


async def test_within_limits_is_served_and_video_thinned(media: dict[str, bytes]) -> None:
    runtime = fake_runtime()
    for key, value in LIMITS.items():
        setattr(runtime.config.server, key, value)
    body = ask(image(jpeg_bytes("a")), video(media["ten"]), audio(silent_wav(2.0, 24000)))
    async with running(runtime) as address, httpx.AsyncClient(base_url=address.http) as http:
        r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    engine = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
    assert isinstance(engine, FakeEngine)
    req = engine.requests[-1]
    assert len(req.video) == 4 and req.audio is not None and req.audio.size == 32000


async def test_requests_arriving_together_admit_exactly_the_limit() -> None:
    runtime = fake_runtime(tokens=20, delay_s=0.05)
    runtime.config.server.max_concurrent_requests = 3
    body = b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}]}'

    async def slow_body() -> AsyncIterator[bytes]:  # every request is checked before any
        yield body[:10]                             # has its whole body read
        await asyncio.sleep(0.3)
        yield body[10:]

    async with running(runtime) as address, httpx.AsyncClient(
            base_url=address.http, limits=httpx.Limits(max_connections=20)) as http:
        replies = await asyncio.gather(*(http.post(
            "/v1/chat/completions", content=slow_body(),
            headers={"Content-Type": "application/json"}) for _ in range(8)))
        statuses = sorted(r.status_code for r in replies)
        assert statuses == [200] * 3 + [503] * 5
        r = await http.post("/v1/chat/completions", content=body)  # every slot given back
        assert r.status_code == 200
