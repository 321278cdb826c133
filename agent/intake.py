"""Per-session input limits, checked before anything is decoded or kept.

Frames and audio are metered by token buckets (frames per second; seconds of audio per second of
wall clock, with a burst allowance); text is capped per item and in total while it waits for
``response.create``. Every refusal is a ``LimitExceeded`` or ``RateLimited`` error that names the
config field, and the session goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.config import ServerConfig
from agent.errors import LimitExceeded, RateLimited

BURST_S = 5.0
"""A session may send this many seconds' worth of its audio rate at once (10 s of audio at the
default 2 s per second)."""


class Bucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.t = burst, clock()

    def take(self, amount: float) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class Intake:
    def __init__(self, server: ServerConfig) -> None:
        self.server = server
        self.frames = Bucket(server.max_frames_per_s, server.max_frames_per_s)
        self.audio = Bucket(server.max_audio_s_per_s, BURST_S * server.max_audio_s_per_s)
        self.frames_refused = 0
        self.audio_refused_s = 0.0

    def frame(self) -> None:
        if not self.frames.take(1):
            self.frames_refused += 1
            raise RateLimited(f"more than {self.server.max_frames_per_s:g} frames per second "
                              "(server.max_frames_per_s); frame dropped")

    def audio_seconds(self, seconds: float) -> None:
        if not self.audio.take(seconds):
            self.audio_refused_s += seconds
            raise RateLimited(
                f"audio arrives faster than {self.server.max_audio_s_per_s:g} s per second "
                f"(server.max_audio_s_per_s, bursts up to {self.audio.burst:g} s); chunk dropped",
                param="audio")

    def text(self, text: str, pending: int, param: str = "item.content") -> None:
        """Refuse an item's text over ``max_item_text_chars``, or waiting text over
        ``max_pending_text_chars`` once ``pending`` characters already wait."""
        limit = self.server.max_item_text_chars
        if len(text) > limit:
            raise LimitExceeded(f"text of {len(text)} characters is over "
                                f"server.max_item_text_chars ({limit})", param=param)
        limit = self.server.max_pending_text_chars
        if pending + len(text) > limit:
            raise LimitExceeded(
                f"{pending + len(text)} characters of user text would wait for response.create, "
                f"over server.max_pending_text_chars ({limit}); ask, or send less", param=param)
