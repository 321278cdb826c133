"""Scene-change gating: a window that shows what a handler already acted on costs no model call.

Each gated handler keeps the thumbnail of the last window it acted on. A new window's kept frame
is reduced to a small grey thumbnail (JPEG frames are decoded at 1/4 scale straight from their
DCT coefficients, so the full picture is never decoded for this) and compared with it. The
window goes to the handler only when enough thumbnail pixels changed, after removing a uniform
brightness shift (auto-exposure). Comparing with the last window *acted on*, not the previous
window, means a slow drift adds up until it counts, and a change that arrives while the handler
is busy is still seen by the next window it takes.

Questions (``response.create``) never pass through a gate: a question always looks.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from agent.config import GatingConfig
from agent.media import Frame, Window

THUMB_SIZE = (160, 120)
"""Thumbnail width and height: 640x480 at 1/4 scale, so each pixel averages a 4x4 block (at
1/8 scale one changed letter of a 16 px word can vanish into one block)."""
CACHE_FRAMES = 8
"""Thumbnails kept per session, so handlers gating the same frame reduce it once."""
Thumb = NDArray[np.int16]


def thumbnail(frame: Frame) -> Thumb:
    """The frame as a THUMB_SIZE grey thumbnail. Raises like ``Frame.image`` on bad data."""
    if not frame.decoded and frame.b64.startswith("/9j/"):  # base64 of a JPEG's FF D8 FF
        try:
            with Image.open(io.BytesIO(base64.b64decode(frame.b64))) as img:
                img.draft("L", (img.width // 4, img.height // 4))
                small = img.convert("L")
        except Exception:  # a corrupt picture: let the handler report it
            small = Image.fromarray(frame.image()).convert("L")
    else:
        small = Image.fromarray(frame.image()).convert("L")
    if small.size != THUMB_SIZE:
        small = small.resize(THUMB_SIZE, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.int16)


def changed_pixels(a: Thumb, b: Thumb, pixel_delta: int) -> int:
    """How many thumbnail pixels differ by more than ``pixel_delta`` grey levels, after
    removing the median difference (a uniform change of brightness)."""
    diff = a - b
    diff -= int(np.median(diff))
    return int(np.count_nonzero(np.abs(diff) > pixel_delta))


class Thumbnails:
    """A session's small cache of frame thumbnails, shared by its gates (thread-safe)."""

    def __init__(self, size: int = CACHE_FRAMES) -> None:
        self._items: OrderedDict[int, tuple[Frame, Thumb]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, frame: Frame) -> Thumb:
        with self._lock:
            hit = self._items.get(id(frame))
            if hit is not None and hit[0] is frame:
                return hit[1]
        thumb = thumbnail(frame)
        with self._lock:
            self._items[id(frame)] = (frame, thumb)  # the frame is held: its id stays unique
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return thumb


@dataclass
class SceneGate:
    """One handler's gate: admits windows whose scene changed since the last one admitted."""

    settings: GatingConfig
    thumbs: Thumbnails
    reference: Thumb | None = None
    skipped: int = 0
    """Windows skipped because they showed the scene the handler last acted on."""

    def check(self, work: object) -> Verdict:
        """Whether ``work`` goes to the handler, and the scene it shows; blocking (run it off
        the event loop). Work that is not a window with a frame always passes. The scene
        becomes the reference only once a model has answered it (``answered``)."""
        if not isinstance(work, Window) or work.frame is None:
            return Verdict(True)
        try:
            thumb = self.thumbs.get(work.frame)
        except Exception:  # a corrupt frame: the handler reports it
            return Verdict(True)
        if self.reference is not None and self.reference.shape == thumb.shape and (
                changed_pixels(thumb, self.reference, self.settings.pixel_delta)
                < self.settings.min_pixels):
            self.skipped += 1
            return Verdict(False)
        return Verdict(True, thumb)

    def answered(self, verdict: Verdict) -> None:
        """The handler's response to the checked work ended with the model's answer: its
        scene is what the handler last acted on. (A refused, failed or cancelled call leaves
        the reference alone, so the next window of the same scene goes to the model.)"""
        if verdict.scene is not None:
            self.reference = verdict.scene

    def admit(self, work: object) -> bool:
        """``check``, counting the work as answered at once."""
        verdict = self.check(work)
        self.answered(verdict)
        return verdict.admitted


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    scene: Thumb | None = None


def make_gate(default_on: bool, settings: GatingConfig | None,
              thumbs: Thumbnails) -> SceneGate | None:
    """The gate for a handler, or ``None`` when gating is off for it."""
    settings = settings or GatingConfig()
    enabled = default_on if settings.enabled is None else settings.enabled
    return SceneGate(settings, thumbs) if enabled else None
