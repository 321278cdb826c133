"""Frames, audio and windows: the values that flow from the sampler to the handlers."""

from __future__ import annotations

import base64
import binascii
import io
import threading
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from agent import metrics
from agent.errors import InvalidMedia

Modality = Literal["image", "video", "audio"]
AUDIO_RATE = 16_000
"""Every window's audio is mono float32 at this rate."""

_MAGIC = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
}
_MAX_PIXELS = 4096 * 4096
MAX_ASPECT_RATIO = 200
"""Longer side over shorter side of any picture we take (Qwen2-VL refuses more, and the
embedded models' resizing breaks down near it)."""
Audio = NDArray[np.float32]
RGB = NDArray[np.uint8]


def sniff_image(data: bytes) -> str:
    """The MIME type of an encoded image from its first bytes; raise if it is not one we take."""
    for magic, mime in _MAGIC.items():
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise InvalidMedia("not a JPEG, PNG or WebP image", param="image_url")


def payload_at(url: str) -> int:
    """Where the base64 payload of an image data URL (``data:image/jpeg;base64,...``) starts."""
    comma = url.find(",")
    if comma < 0 or not url.startswith("data:") or not url.endswith(";base64", 0, comma):
        raise InvalidMedia(
            "image_url must be a data URL: data:image/jpeg;base64,...", param="image_url"
        )
    return comma + 1


class Frame:
    """One encoded video frame. It is decoded at most once, and only if a handler looks at it.

    Not a frozen dataclass on purpose: it caches its decoded picture so that two handlers
    reading the same window decode it once, from whichever thread asks first.
    """

    __slots__ = ("_b64", "_image", "_lock", "ts")

    def __init__(self, b64: str, ts: float, at: int = 0) -> None:
        """``b64[at:]`` is the base64 picture (a data URL and its payload's offset: the payload
        is copied out only if it is read, once a second rather than 30 times)."""
        self._b64 = (b64, at)
        self.ts = ts
        self._image: RGB | None = None
        self._lock = threading.Lock()

    @property
    def b64(self) -> str:
        """The base64 picture (``""`` for a frame that came decoded)."""
        text, at = self._b64  # one read: another thread may be replacing it
        if at:
            text = text[at:]
            self._b64 = (text, 0)
        return text

    @classmethod
    def of_image(cls, image: RGB, ts: float) -> Frame:
        """A frame already decoded (a video file's frame)."""
        frame = cls("", ts)
        frame._image = image
        return frame

    def image(self) -> RGB:
        """The frame as an RGB array (height, width, 3); raises InvalidMedia if corrupt."""
        with self._lock:
            if self._image is None:
                self._image = decode_image(self.b64)
                metrics.frames_decoded.inc()
            return self._image

    @property
    def decoded(self) -> bool:
        return self._image is not None


def image_frame(url: str, ts: float) -> Frame:
    """A client's data-URL picture as a frame, after a cheap check of its header (the picture
    is decoded only if a handler looks at it)."""
    at = payload_at(url)
    sniff_image(b64decode(url[at:at + 16], "image_url"))
    return Frame(url, ts, at)


def b64decode(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMedia(f"{what} is not valid base64: {exc}", param=what) from None


def check_shape(width: int, height: int, param: str = "image_url") -> None:
    """Refuse a degenerate picture (a line, or longer than ``MAX_ASPECT_RATIO`` to 1) before it
    is decoded."""
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidMedia(f"image of {width}x{height} pixels: its sides may differ by at most "
                           f"{MAX_ASPECT_RATIO} to 1", param=param)


def decode_image(b64: str) -> RGB:
    raw = b64decode(b64, "image_url")
    sniff_image(raw)
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > _MAX_PIXELS:
                raise InvalidMedia(f"image too large: {img.width}x{img.height}")
            check_shape(img.width, img.height)
            img.load()
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError as exc:  # PIL refuses its header before we can
        raise InvalidMedia(f"image too large: {exc}", param="image_url") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidMedia(f"corrupt image: {why(exc)}", param="image_url") from None


def why(exc: Exception) -> str:
    """A decoder's complaint, without PIL's ``<_io.BytesIO object at 0x...>``."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a picture in a known format"
    return str(exc)


@dataclass(frozen=True, slots=True)
class Window:
    """What the sampler hands the handlers: ``[start, end)`` seconds of media time."""

    index: int
    start: float
    end: float
    frame: Frame | None = None
    audio: Audio = field(default_factory=lambda: np.zeros(0, np.float32))
    frames_dropped: int = 0
    final: bool = False
    """True when the client committed its audio or the stream ended: close open utterances."""

    def has(self, modality: Modality) -> bool:
        if modality == "audio":
            return self.audio.size > 0 or self.final
        return self.frame is not None

    @property
    def start_ms(self) -> int:
        return round(self.start * 1000)

    @property
    def end_ms(self) -> int:
        return round(self.end * 1000)
