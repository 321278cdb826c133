"""A session's media path: sampler -> windows -> handlers, latest-wins for busy handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.config import ProfileConfig
from agent.errors import HandlerFailed, LimitExceeded
from agent.gating import SceneGate, Thumbnails, make_gate
from agent.handler import Handler, Mailbox, SessionOptions
from agent.media import AUDIO_RATE, Audio, Frame, Window
from agent.runtime import Runtime
from agent.sampler import Sampler
from agent.transcripts import Transcriber
from agent.watch_runner import Watches

log = logging.getLogger(__name__)
OnWork = Callable[[Handler, Any], Awaitable[str]]
"""Runs a handler's live response to some work; returns how it ended (a response status, or
``deferred``: the model's queue was full, nothing was said)."""
ANSWERED = ("completed", "incomplete")
RETRY_S = (0.05, 1.0)
"""A deferred window waits this long before it tries again, doubling from the first to the
second."""
MAX_RECENT_FRAMES = 64
FEED_QUEUE = 16
"""Windows that may wait for a handler that feeds off the event loop (``feed_off_loop``)."""
FEED_AUDIO_S = 16.0
"""Seconds of just-received audio that may wait for a handler that hears it on arrival
(``hears_on_arrival``)."""
CLEAR = None  # in a feed queue: forget buffered audio, in order with the windows


@dataclass(frozen=True, slots=True)
class Arrived:
    """Audio as it was received (16 kHz), its first sample at media time ``t``."""

    audio: Audio
    t: float


@dataclass
class _Slot:
    handler: Handler
    mailbox: Mailbox[Any]
    task: asyncio.Task[None]
    gate: SceneGate | None = None
    feeding: asyncio.Queue[Window | Arrived | None] | None = None
    feeder: asyncio.Task[None] | None = None
    feed_dropped: int = 0
    queued_windows: int = 0
    queued_audio: int = 0  # samples of Arrived waiting

    def cancel(self) -> None:
        self.task.cancel()
        if self.feeder is not None:
            self.feeder.cancel()


class LiveMedia:
    """Owns the sampler, the handlers and their workers for one session."""

    def __init__(
        self, runtime: Runtime, session_id: str, on_work: OnWork, *, profile: ProfileConfig,
        options: SessionOptions | None = None,
    ) -> None:
        self.runtime = runtime
        self.options = options if options is not None else SessionOptions()
        self.profile = profile
        sample_fps, video_window_s = profile.sample_fps, profile.video_window_s
        self.session_id = session_id
        self.on_work = on_work
        self.live = False
        self.sampler = Sampler(1.0 / sample_fps)
        self.video_window_s = video_window_s
        self.slots: dict[str, _Slot] = {}
        self.last_window: Window | None = None
        self.recent: deque[Frame] = deque(maxlen=self._recent_len())
        self._ticker: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._heard_to = 0.0  # media time past the audio given to hear on arrival
        self.thumbs = Thumbnails()
        self.skipped_before: dict[str, int] = {}  # counts of handlers since turned off
        self.deferred = 0
        """Live windows that found their model's queue full and waited to go again."""
        self.dropped_before: dict[str, int] = {}
        self.watches: Watches | None = None
        """Fed every window too, live or not (the conversation's watches)."""
        self.transcriber: Transcriber | None = None
        """Fed every window too (what the user says, transcribed)."""

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_loop(), name=f"tick-{self.session_id}")

    async def close(self) -> None:
        tasks = [t for s in self.slots.values() for t in (s.task, s.feeder) if t is not None]
        if self._ticker is not None:
            tasks.append(self._ticker)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for name in list(self.slots):  # keep the counts for the session's close log
            self._forget(name)
        # the session may outlive its client in a reference cycle until the collector runs:
        # let its media go now
        self.recent.clear()
        self.last_window = None
        self.sampler.release()

    @property
    def handler_names(self) -> list[str]:
        return list(self.slots)

    @property
    def handlers_dropped(self) -> int:
        """Windows that busy handlers let go for a newer one, all handlers together."""
        return sum(self.superseded(name) for name in {*self.slots, *self.dropped_before})

    def superseded(self, name: str) -> int:
        """Windows handler ``name`` let go in this session because a newer one came while it
        was busy (latest wins), or because it fell ``FEED_QUEUE`` windows behind."""
        slot = self.slots.get(name)
        now = slot.mailbox.dropped + slot.feed_dropped if slot is not None else 0
        return self.dropped_before.get(name, 0) + now

    def skipped(self, name: str) -> int:
        """Windows handler ``name`` skipped as unchanged in this session (scene-change gating)."""
        slot = self.slots.get(name)
        now = slot.gate.skipped if slot is not None and slot.gate is not None else 0
        return self.skipped_before.get(name, 0) + now

    @property
    def windows_skipped(self) -> int:
        """Windows skipped as unchanged, all handlers together, in this session."""
        return sum(self.skipped(name) for name in {*self.slots, *self.skipped_before})

    def latest_frames(self) -> tuple[Frame, ...]:
        """The sampled frames of the video window, the open window's newest frame last."""
        pending = self.sampler.pending_frame
        return (*self.recent, pending) if pending is not None else tuple(self.recent)

    def set_handlers(self, names: list[str]) -> None:
        for name in list(self.slots):
            if name not in names:
                self._forget(name).cancel()  # its response in progress ends as cancelled
        failed = []
        for name in names:
            if name not in self.slots:
                try:
                    self._start(name)
                except Exception as exc:
                    log.exception("handler %s failed to start", name)
                    failed.append(f"{name}: {exc}")
        if failed:
            raise HandlerFailed("handlers failed to start (the others run): " + "; ".join(failed),
                                param="session.streamagent.handlers")

    def _start(self, name: str) -> None:
        handler = self.runtime.make_handler(name, self.session_id, self.profile, self.options)
        settings = self.runtime.config.handlers.get(name)
        gate = make_gate(handler.gated, settings.gating if settings else None, self.thumbs)
        box: Mailbox[Any] = Mailbox()
        task = asyncio.create_task(self._worker(handler, box, gate), name=f"{name}-worker")
        slot = self.slots[name] = _Slot(handler, box, task, gate)
        if handler.feed_off_loop:
            slot.feeding = asyncio.Queue()  # bounded by _enqueue
            slot.feeder = asyncio.create_task(self._feeder(slot), name=f"{name}-feed")

    def _forget(self, name: str) -> _Slot:
        """Remove a handler's slot, keeping its counts."""
        self.skipped_before[name] = self.skipped(name)
        self.dropped_before[name] = self.superseded(name)
        slot = self.slots.pop(name)
        return slot

    def set_models(self, models: dict[str, str]) -> ProfileConfig:
        """Give handlers other models for this session (running ones restart with theirs);
        return the session's profile with the new choices."""
        changed = [h for h, m in models.items() if self.runtime.model_for(h, self.profile) != m]
        self.profile = self.profile.model_copy(update={"models": {**self.profile.models,
                                                                  **models}})
        names = self.handler_names
        self.set_handlers([n for n in names if n not in changed])
        self.set_handlers(names)
        return self.profile

    def set_fps(self, sample_fps: float) -> None:
        self._dispatch(self.sampler.set_window(1.0 / sample_fps))
        self.recent = deque(self.recent, maxlen=self._recent_len())

    def set_video_window(self, seconds: float) -> None:
        self.video_window_s = seconds
        self.recent = deque(self.recent, maxlen=self._recent_len())

    def add_frame(self, frame: Frame) -> None:
        self._dispatch(self.sampler.add_frame(frame))
        self._arrived.set()

    def add_audio(self, samples: Audio, ts: float | None) -> None:
        """Add audio; raise ``LimitExceeded`` (after keeping what fits) when the open window's
        audio bound is passed and the rest is dropped."""
        stats = self.sampler.stats
        dropped = stats.audio_dropped_s
        self._dispatch(self.sampler.add_audio(samples, ts))
        t = max(self.sampler.audio_t - samples.size / AUDIO_RATE, self._heard_to)
        self._heard_to = t + samples.size / AUDIO_RATE  # a stream that never goes back
        self._hear(Arrived(samples, t))
        self._arrived.set()
        if stats.audio_dropped_s > dropped:
            raise LimitExceeded(
                f"{stats.audio_dropped_s - dropped:.2f} s of audio dropped: one window holds at "
                f"most {self.sampler.max_audio_samples / AUDIO_RATE:g} s; send "
                "input_audio_buffer.commit or use a shorter window", param="audio")

    def _hear(self, arrived: Arrived) -> None:
        """Audio as received, to those that hear it on arrival (utterances end as soon as
        their silence is heard, not when their window closes)."""
        if not arrived.audio.size:
            return
        for slot in self.slots.values():
            if slot.handler.hears_on_arrival:
                if slot.feeding is not None:
                    self._enqueue(slot, arrived)
                else:
                    self._put(slot, hear_safely(slot.handler, [arrived]))
        if self.transcriber is not None:
            self.transcriber.hear(arrived.audio, arrived.t)

    def clear_audio(self) -> None:
        """Forget every buffered sample: the open window's and each handler's (VAD state)."""
        self.sampler.clear_audio()
        for slot in self.slots.values():
            if slot.feeding is None:
                slot.handler.clear_audio()
            else:
                self._enqueue(slot, CLEAR)
        if self.watches is not None:
            self.watches.clear_audio()

    def flush(self) -> None:
        self._dispatch(self.sampler.flush(final=True))

    def _recent_len(self) -> int:
        return max(1, min(MAX_RECENT_FRAMES, round(self.video_window_s / self.sampler.window_s)))

    def _dispatch(self, windows: list[Window]) -> None:
        for window in windows:
            self.last_window = window
            if window.frame is not None:
                self.recent.append(window.frame)
            for slot in self.slots.values():
                if slot.feeding is not None:
                    self._enqueue(slot, window)
                else:
                    self._feed(slot, window)
            if self.watches is not None:
                self.watches.feed(window)
            if self.transcriber is not None and window.final:
                self.transcriber.end_utterance(window.end)

    def _feed(self, slot: _Slot, window: Window) -> None:
        self._put(slot, feed_safely(slot.handler, window))

    def _put(self, slot: _Slot, work: Any) -> None:
        if work is not None and self.live:
            slot.mailbox.put(work)

    def _enqueue(self, slot: _Slot, item: Window | Arrived | None) -> None:
        assert slot.feeding is not None
        audio = item.audio.size if isinstance(item, Arrived) else 0
        if (slot.queued_audio + audio > FEED_AUDIO_S * AUDIO_RATE if audio
                else item is not CLEAR and slot.queued_windows >= FEED_QUEUE):
            slot.feed_dropped += 1
            log.warning("handler %s is %s behind; %s is dropped", slot.handler.name,
                        f"{FEED_AUDIO_S:g} s of audio" if audio else f"{FEED_QUEUE} windows",
                        "audio" if audio else "a window")
            return
        slot.queued_audio += audio
        slot.queued_windows += isinstance(item, Window)
        slot.feeding.put_nowait(item)

    async def _feeder(self, slot: _Slot) -> None:
        """Feed windows and received audio to a handler on a thread, in order (its VAD, say,
        stays off the loop); audio received meanwhile goes in one call."""
        assert slot.feeding is not None
        while True:
            items = [await slot.feeding.get()]
            while not slot.feeding.empty():
                items.append(slot.feeding.get_nowait())
            try:
                for group in _runs(items):
                    await self._feed_group(slot, group)
            finally:
                for _ in items:
                    slot.feeding.task_done()

    async def _feed_group(self, slot: _Slot, group: list[Any]) -> None:
        first = group[0]
        if first is CLEAR:
            await asyncio.to_thread(slot.handler.clear_audio)
        elif isinstance(first, Arrived):
            slot.queued_audio -= sum(a.audio.size for a in group)
            self._put(slot, await asyncio.to_thread(hear_safely, slot.handler, group))
        else:
            slot.queued_windows -= 1
            self._put(slot, await asyncio.to_thread(feed_safely, slot.handler, first))

    async def settled(self) -> None:
        """Wait until every handler has been fed every window closed so far (a question
        asked right after ``input_audio_buffer.commit`` must see the committed audio)."""
        for slot in list(self.slots.values()):
            if slot.feeding is not None:
                await slot.feeding.join()

    async def _worker(self, handler: Handler, box: Mailbox[Any], gate: SceneGate | None) -> None:
        """Latest wins; a window whose model call found the queue full waits in the mailbox
        (unless a newer one came) and goes again when there may be room; only a window a model
        answered becomes the gate's reference."""
        delay = RETRY_S[0]
        while True:
            work = await box.get()
            verdict = await asyncio.to_thread(gate.check, work) if gate is not None else None
            if verdict is not None and not verdict.admitted:
                continue
            ended = await self.on_work(handler, work)
            if ended == "deferred":
                self.deferred += 1
                box.put_back(work)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_S[1])
                continue
            delay = RETRY_S[0]
            if gate is not None and verdict is not None and ended in ANSWERED:
                gate.answered(verdict)

    async def _tick_loop(self) -> None:
        """Close windows on time. Sleeps until the open window's deadline, or until media
        arrives when none is open, so idle sessions cost no wake-ups."""
        while True:
            wait = self.sampler.seconds_to_close()
            if wait is None:
                await self._arrived.wait()
                self._arrived.clear()
                continue
            await asyncio.sleep(max(0.005, wait))
            self._dispatch(self.sampler.tick())


def _runs(items: list[Any]) -> list[list[Any]]:
    """``items`` in order, consecutive ``Arrived`` together, every other item alone."""
    runs: list[list[Any]] = []
    for item in items:
        if isinstance(item, Arrived) and runs and isinstance(runs[-1][0], Arrived):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def hear_safely(handler: Handler, pieces: list[Arrived]) -> Any:
    """``handler.hear(pieces)``, logged and ``None`` if it fails (the stream goes on)."""
    try:
        return handler.hear([(a.audio, a.t) for a in pieces])
    except Exception:
        log.exception("handler %s failed on audio at %.2f s", handler.name, pieces[0].t)
        return None


def feed_safely(handler: Handler, window: Window) -> Any:
    """``handler.feed(window)``; a handler that fails on one window is logged, and the stream
    goes on (its work for that window is ``None``)."""
    try:
        return handler.feed(window)
    except Exception:
        log.exception("handler %s failed on window %d", handler.name, window.index)
        return None
