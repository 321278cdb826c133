"""Turns an irregular stream of frames and audio into regular windows of media time.

Semantics (docs/architecture.md, "Sampling"): windows are ``[k/fps, (k+1)/fps)`` seconds of
media time; the newest frame of a window wins and earlier ones are dropped without decoding;
audio is cut at window boundaries. Times come from the client (media timestamps) or from the
receive clock.
Memory is bounded: one pending frame and at most ``max_audio_s`` of audio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent import metrics
from agent.media import AUDIO_RATE, Audio, Frame, Window

RESYNC_S = 0.5
"""Receive-clock audio that drifts further than this from the clock is re-anchored."""


@dataclass(slots=True)
class SamplerStats:
    frames: int = 0
    frames_dropped: int = 0
    audio_s: float = 0.0
    audio_dropped_s: float = 0.0
    windows: int = 0


class Sampler:
    def __init__(
        self,
        window_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        grace_s: float = 0.1,
        max_audio_s: float = 30.0,
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self.grace_s = grace_s
        self.max_audio_samples = int(max_audio_s * AUDIO_RATE)
        self.stats = SamplerStats()
        self._t0 = clock()
        self._lag = 0.0  # receive clock minus media time of the newest item
        self._index: int | None = None
        self._frame: Frame | None = None
        self._dropped = 0
        self._audio: list[Audio] = []
        self._audio_len = 0
        self._audio_t: float | None = None  # media time of the next audio sample

    def now(self) -> float:
        """Seconds of receive clock since the session started (media time without timestamps)."""
        return self.clock() - self._t0

    @property
    def pending_frame(self) -> Frame | None:
        """The newest frame of the open window (not yet handed out)."""
        return self._frame

    def set_window(self, window_s: float) -> list[Window]:
        """Change the window length; the open window is closed first."""
        closed = self.flush(final=False)
        self.window_s = window_s
        return closed

    def add_frame(self, frame: Frame) -> list[Window]:
        self.stats.frames += 1
        metrics.frames_received.inc()
        closed = self._advance(frame.ts)
        if self._frame is not None:
            self._dropped += 1
            self.stats.frames_dropped += 1
            metrics.frames_dropped.inc()
        self._frame = frame
        return closed

    def add_audio(self, samples: Audio, ts: float | None = None) -> list[Window]:
        """Append mono 16 kHz audio; ``ts`` is the media time of its first sample, if known."""
        if ts is None:  # receive clock: the chunk ended about now; stay contiguous if we can
            now = self.now()
            ts = self._audio_t
            if ts is None or abs(ts - (now - samples.size / AUDIO_RATE)) > RESYNC_S:
                ts = max(0.0, now - samples.size / AUDIO_RATE)
        self.stats.audio_s += samples.size / AUDIO_RATE
        closed: list[Window] = []
        while samples.size:
            closed += self._advance(ts)
            assert self._index is not None
            end = (self._index + 1) * self.window_s
            n = min(samples.size, max(1, math.ceil((end - ts) * AUDIO_RATE - 1e-6)))
            self._append_audio(samples[:n])
            samples, ts = samples[n:], ts + n / AUDIO_RATE
        self._audio_t = ts
        self._lag = self.now() - ts  # the newest media time is the chunk's end
        return closed

    @property
    def audio_t(self) -> float:
        """Media time just past the newest audio sample (0 before any)."""
        return self._audio_t or 0.0

    def release(self) -> None:
        """Drop the pending frame and audio (the session is over)."""
        self._frame = None
        self.clear_audio()

    def clear_audio(self) -> None:
        """Drop the open window's audio (``input_audio_buffer.clear``)."""
        self.stats.audio_dropped_s += self._audio_len / AUDIO_RATE
        self._audio, self._audio_len = [], 0

    def seconds_to_close(self) -> float | None:
        """How long until ``tick`` closes the open window; ``None`` when none is open."""
        if self._index is None:
            return None
        end = (self._index + 1) * self.window_s
        return end + self.grace_s - (self.now() - self._lag)

    def tick(self) -> list[Window]:
        """Close the open window once the receive clock has passed its end (plus a grace)."""
        if self._index is None:
            return []
        end = (self._index + 1) * self.window_s
        if self.now() - self._lag >= end + self.grace_s:
            return [self._close(final=False)]
        return []

    def flush(self, final: bool = True) -> list[Window]:
        """Close the open window now (audio committed, stream ended)."""
        if self._index is None:
            if not final:
                return []
            t = self.now() - self._lag
            self._index = int(t // self.window_s)
        return [self._close(final=final)]

    def _advance(self, ts: float) -> list[Window]:
        self._lag = self.now() - ts
        index = int(ts // self.window_s)
        if self._index is None:
            self._index = index
            return []
        if index <= self._index:  # same window, or late: counted in the open window
            return []
        closed = self._close(final=False)
        self._index = index
        return [closed]

    def _append_audio(self, chunk: Audio) -> None:
        room = self.max_audio_samples - self._audio_len
        if chunk.size > room:
            self.stats.audio_dropped_s += (chunk.size - max(room, 0)) / AUDIO_RATE
            chunk = chunk[: max(room, 0)]
        if chunk.size:
            self._audio.append(chunk)
            self._audio_len += chunk.size

    def _close(self, final: bool) -> Window:
        assert self._index is not None
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        window = Window(
            index=self._index,
            start=self._index * self.window_s,
            end=(self._index + 1) * self.window_s,
            frame=self._frame,
            audio=audio,
            frames_dropped=self._dropped,
            final=final,
        )
        self.stats.windows += 1
        metrics.windows.inc()
        self._index = None
        self._frame, self._dropped = None, 0
        self._audio, self._audio_len = [], 0
        return window
