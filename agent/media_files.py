"""Whole media files from requests (chat completions): images, videos sampled at 1 fps as the
live path does, and audio as 16 kHz mono. Where they may come from is the operator's choice."""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import re
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import UnidentifiedImageError

from agent.errors import InvalidMedia
from agent.media import AUDIO_RATE, RGB, Audio, decode_image

MAX_FRAMES = 64
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class MediaPolicy:
    """Data URLs and bare base64 always; local files under ``local_dirs`` and http(s) URLs only
    when the operator enables them (off by default: a server must not read arbitrary files or
    fetch arbitrary URLs for anonymous callers)."""

    def __init__(self, local_dirs: list[str], remote_urls: bool, max_bytes: int) -> None:
        self.local_dirs = [Path(d).expanduser().resolve() for d in local_dirs]
        self.remote_urls = remote_urls
        self.max_bytes = max_bytes

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
            return self._fetch(url, param)
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
            return real.read_bytes()
        except OSError as exc:
            raise InvalidMedia(f"cannot read {path}: {exc.strerror}", param=param) from None

    def _fetch(self, url: str, param: str) -> bytes:
        if not self.remote_urls:
            raise InvalidMedia("fetching URLs is off on this server (server.fetch_urls)",
                               param=param)
        host = urllib.parse.urlsplit(url).hostname or ""
        try:
            addr = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, ValueError):
            raise InvalidMedia(f"cannot resolve {host!r}", param=param) from None
        if addr.is_private or addr.is_loopback or addr.is_link_local:
            raise InvalidMedia("URLs to private or local addresses are refused", param=param)
        with urllib.request.urlopen(url, timeout=10) as resp:
            data: bytes = resp.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise InvalidMedia("media larger than the request limit", param=param)
        return data


def image(data: bytes, param: str) -> RGB:
    try:
        return decode_image(base64.b64encode(data).decode())
    except InvalidMedia as exc:
        raise InvalidMedia(exc.message, param=param) from None


def video(data: bytes, param: str, fps: float = 1.0) -> tuple[RGB, ...]:
    """Frames at ``fps`` (the newest of each 1/fps window, as the sampler keeps), at most 64."""
    frames: dict[int, RGB] = {}
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                for frame in _decode(packet):
                    if isinstance(frame, av.VideoFrame) and frame.time is not None:
                        frames[int(frame.time * fps)] = np.asarray(frame.to_ndarray(
                            format="rgb24"), np.uint8)
    except (av.error.FFmpegError, IndexError, UnidentifiedImageError) as exc:
        raise InvalidMedia(f"cannot decode the video: {exc}", param=param) from None
    if not frames:
        raise InvalidMedia("the video has no frames", param=param)
    ordered = [frames[k] for k in sorted(frames)]
    if len(ordered) > MAX_FRAMES:
        step = len(ordered) / MAX_FRAMES
        ordered = [ordered[int(i * step)] for i in range(MAX_FRAMES)]
    return tuple(ordered)


def audio(data: bytes, param: str) -> Audio:
    """Any audio file PyAV reads -> mono float32 at 16 kHz."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
    chunks: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]
            for packet in container.demux(stream):
                for frame in _decode(packet):
                    if isinstance(frame, av.AudioFrame):
                        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except (av.error.FFmpegError, IndexError) as exc:
        raise InvalidMedia(f"cannot decode the audio: {exc}", param=param) from None
    if not chunks:
        raise InvalidMedia("the audio is empty", param=param)
    out: Audio = np.concatenate(chunks).astype(np.float32)
    return out


def _decode(packet: Any) -> list[av.VideoFrame | av.AudioFrame]:
    try:
        return [f for f in packet.decode() if isinstance(f, (av.VideoFrame, av.AudioFrame))]
    except av.error.InvalidDataError:
        return []  # a damaged packet: skip it, keep the rest


