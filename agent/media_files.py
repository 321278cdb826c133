"""Whole media files from requests (chat completions): images, videos sampled at 1 fps as the
live path does, and audio as 16 kHz mono. Where they may come from is the operator's choice.
Every limit is checked on what the file's header says before anything is decoded, and again
while decoding (a header can lie)."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from agent.config import ServerConfig
from agent.errors import InvalidMedia, LimitExceeded
from agent.fetch import Fetcher
from agent.media import AUDIO_RATE, RGB, Audio, check_shape, sniff_image, why

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-file limits of ``server`` (docs/config.md)."""

    image_pixels: int = 2048 * 2048
    video_frames: int = 64
    video_pixels: int = 1920 * 1080
    video_s: float = 120.0
    audio_s: float = 120.0
    audio_rate: int = 48000

    @classmethod
    def of(cls, cfg: ServerConfig) -> Limits:
        return cls(cfg.max_image_pixels, cfg.max_video_frames, cfg.max_video_pixels,
                   cfg.max_video_s, cfg.max_audio_s, cfg.max_audio_rate)


class MediaPolicy:
    """Data URLs and bare base64 always; local files under ``local_dirs`` and http(s) URLs only
    when the operator enables them (off by default: a server must not read arbitrary files or
    fetch arbitrary URLs for anonymous callers)."""

    def __init__(self, local_dirs: list[str], fetcher: Fetcher | None, max_bytes: int) -> None:
        self.local_dirs = [Path(d).expanduser().resolve() for d in local_dirs]
        self.fetcher = fetcher
        self.max_bytes = max_bytes

    @classmethod
    def of(cls, cfg: ServerConfig) -> MediaPolicy:
        fetcher = Fetcher(cfg.max_message_bytes, cfg.fetch_timeout_s, cfg.fetch_max_redirects,
                          cfg.fetch_allow_hosts) if cfg.fetch_urls else None
        return cls(cfg.media_dirs, fetcher, cfg.max_message_bytes)

    def load(self, url: str, param: str) -> bytes:
        if url.startswith("data:"):
            head, sep, payload = url.partition(",")
            if not sep or not head.endswith(";base64"):
                raise InvalidMedia("data URLs must be base64: data:TYPE;base64,...", param=param)
            return self._b64(payload, param)
        if len(url) >= 16 and len(url) % 4 == 0 and _BASE64.fullmatch(url):
            return self._b64(url, param)  # bare base64 (a JPEG's starts with "/9j/")
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme in ("http", "https"):
            if self.fetcher is None:
                raise InvalidMedia("fetching URLs is off on this server (server.fetch_urls)",
                                   param=param)
            return self.fetcher(url, param)
        if scheme == "file" or url.startswith(("/", "./", "~")):
            return self._read(urllib.parse.urlsplit(url).path if scheme else url, param)
        return self._b64(url, param)  # bare base64, as ms-swift and vLLM accept

    def _b64(self, payload: str, param: str) -> bytes:
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMedia("not a data URL, base64, or an allowed path or URL",
                               param=param) from None
        if not data:
            raise InvalidMedia("empty media", param=param)
        return data

    def _read(self, path: str, param: str) -> bytes:
        real = Path(path).expanduser().resolve()
        if not any(real.is_relative_to(d) for d in self.local_dirs):
            raise InvalidMedia("local files are not allowed here (server.media_dirs)",
                               param=param)
        try:
            if real.stat().st_size > self.max_bytes:
                raise LimitExceeded(f"file larger than {self.max_bytes} bytes "
                                    "(server.max_message_bytes)", param=param)
            return real.read_bytes()
        except OSError as exc:
            raise InvalidMedia(f"cannot read {path}: {exc.strerror}", param=param) from None


def image(data: bytes, param: str, limits: Limits) -> RGB:
    """Decode one image, its size checked from the header first."""
    try:
        sniff_image(data)
        with Image.open(io.BytesIO(data)) as img:
            _pixels(img.width, img.height, limits.image_pixels, "max_image_pixels", param)
            check_shape(img.width, img.height, param)
            img.load()
            return np.asarray(img.convert("RGB"))
    except InvalidMedia as exc:
        raise type(exc)(exc.message, param=param) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise InvalidMedia(f"corrupt image: {why(exc)}", param=param) from None


def video(data: bytes, param: str, limits: Limits, fps: float = 1.0) -> tuple[RGB, ...]:
    """Frames at ``fps`` (the newest of each 1/fps window, as the sampler keeps), evenly thinned
    to ``limits.video_frames``; only the frames kept are converted."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            _pixels(ctx.width, ctx.height, limits.video_pixels, "max_video_pixels", param)
            check_shape(ctx.width, ctx.height, param)
            seconds = _duration(container, stream)
            _seconds(seconds or 0.0, limits.video_s, "max_video_s", param)
            keep = _kept(seconds, fps, limits)
            frames: dict[int, Any] = {}
            for packet in container.demux(stream):
                for frame in _decode(packet):
                    if not isinstance(frame, av.VideoFrame) or frame.time is None:
                        continue
                    _seconds(frame.time, limits.video_s, "max_video_s", param)
                    _pixels(frame.width, frame.height, limits.video_pixels,
                            "max_video_pixels", param)
                    key = int(frame.time * fps)
                    if keep is None or key in keep:
                        frames[key] = frame  # the newest of its window, still undecoded RGB
            ordered = [frames[k] for k in sorted(frames)]
            if len(ordered) > limits.video_frames:
                step = len(ordered) / limits.video_frames
                ordered = [ordered[int(i * step)] for i in range(limits.video_frames)]
            out = tuple(np.asarray(f.to_ndarray(format="rgb24"), np.uint8) for f in ordered)
    except (av.error.FFmpegError, IndexError, UnidentifiedImageError) as exc:
        raise InvalidMedia(f"cannot decode the video: {why(exc)}", param=param) from None
    if not out:
        raise InvalidMedia("the video has no frames", param=param)
    return out


def audio(data: bytes, param: str, limits: Limits) -> Audio:
    """Any audio file PyAV reads -> mono float32 at 16 kHz, its rate and length checked from
    the header first and its length again while decoding."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
    chunks: list[np.ndarray] = []
    size = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]
            if (stream.sample_rate or 0) > limits.audio_rate:
                raise LimitExceeded(f"audio at {stream.sample_rate} Hz is over "
                                    f"{limits.audio_rate} Hz (server.max_audio_rate)",
                                    param=param)
            _seconds(_duration(container, stream) or 0.0, limits.audio_s, "max_audio_s", param)
            for packet in container.demux(stream):
                for frame in _decode(packet):
                    if isinstance(frame, av.AudioFrame):
                        new = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
                        chunks += new
                        size += sum(c.size for c in new)
                        _seconds(size / AUDIO_RATE, limits.audio_s, "max_audio_s", param)
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except (av.error.FFmpegError, IndexError) as exc:
        raise InvalidMedia(f"cannot decode the audio: {exc}", param=param) from None
    if not chunks:
        raise InvalidMedia("the audio is empty", param=param)
    out: Audio = np.concatenate(chunks).astype(np.float32)
    return out


def _pixels(width: int, height: int, limit: int, field: str, param: str) -> None:
    if width * height > limit:
        raise LimitExceeded(f"{width}x{height} is {width * height} pixels, over {limit} "
                            f"(server.{field})", param=param)


def _seconds(seconds: float, limit: float, field: str, param: str) -> None:
    if seconds > limit + 1e-3:
        raise LimitExceeded(f"{seconds:.1f} s is over {limit:g} s (server.{field})",
                            param=param)


def _duration(container: Any, stream: Any) -> float | None:
    """The length the header declares, if it declares one."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / av.time_base
    return None


def _kept(seconds: float | None, fps: float, limits: Limits) -> set[int] | None:
    """Which 1/fps windows to keep when the header gives the length (``None``: all)."""
    if seconds is None:
        return None
    windows = max(1, math.ceil(seconds * fps))
    if windows <= limits.video_frames:
        return None
    step = windows / limits.video_frames
    return {int(i * step) for i in range(limits.video_frames)}


def _decode(packet: Any) -> list[av.VideoFrame | av.AudioFrame]:
    try:
        return [f for f in packet.decode() if isinstance(f, (av.VideoFrame, av.AudioFrame))]
    except av.error.InvalidDataError:
        return []  # a damaged packet: skip it, keep the rest


