"""A session's watches at work: every window, live or not, is checked against every watch.

Per window, one model call per kind of condition and model, shared by the watches of that kind
(the OCR reads the frame once, then every ``text_contains`` watch looks for its phrase), and
one yes/no question per ``condition`` watch. One window is checked at a time: a newer window
replaces one still waiting (the drop is counted) and inherits the utterances heard in it, so
nothing said is lost. With a ``speech_contains`` watch, every window's audio first goes, in
order and off the event loop, through a voice-activity segmenter of the watches' own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from agent.handler import SessionOptions
from agent.media import AUDIO_RATE, RGB, Window
from agent.pool import Pool
from agent.vad import Segmenter, Utterance
from agent.watch_models import Looker, norm
from agent.watches import Firing, Watch, WatchState, state_of

log = logging.getLogger(__name__)
Fire = Callable[[Firing], None]
"""Told of each firing, on the event loop (the conversation makes it a response)."""
Key = tuple[Any, ...]
Verdict = tuple[bool, float, float]
"""Whether a watch's condition holds, and the media time it is about."""
FEED_QUEUE = 16
"""Windows that may wait for the watches' segmenter; more are dropped (and counted)."""
MAX_HEARD = 4
"""Utterances a waiting window may carry over from the windows it replaced."""
CLEAR = None  # in the segmenter's queue: forget buffered audio, in order with the windows


@dataclass(slots=True)
class _Job:
    window: Window
    heard: list[Utterance] = field(default_factory=list)
    """The utterances that ended in this window (and in windows it replaced)."""


class Watches:
    """One session's watches: ``set`` them, ``feed`` every window, ``close`` at the end."""

    def __init__(self, pool: Pool, session_id: str, options: SessionOptions,
                 fire: Fire) -> None:
        self.looker = Looker(pool, session_id, options)
        self.fire = fire
        self.watches: tuple[Watch, ...] = ()
        self.states: dict[str, WatchState] = {}
        self.dropped = 0
        """Windows let go: a newer one came while one was waiting, or the segmenter fell
        ``FEED_QUEUE`` windows behind."""
        self.failed = 0
        """Model calls (or frames) that failed: their watches skipped that window."""
        self.checked = 0
        """Windows checked."""
        self._job: _Job | None = None
        self._ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._audio: asyncio.Queue[Window | None] = asyncio.Queue(FEED_QUEUE)
        self._listener: asyncio.Task[None] | None = None
        self._listening = False

    def set(self, watches: tuple[Watch, ...]) -> None:
        """Watch for ``watches`` from now on (checked and resolved before); a watch given again
        unchanged keeps its state, so re-sending it does not fire it again."""
        old = {w.id: (w, self.states[w.id]) for w in self.watches}
        self.states = {w.id: old[w.id][1] if w.id in old and old[w.id][0] == w else state_of(w)
                       for w in watches}
        self.watches = watches
        if watches and self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="watches")
        listening = any(w.kind == "speech_contains" for w in watches)
        if listening and not self._listening:
            if self._listener is None:
                self._listener = asyncio.create_task(self._listen(), name="watches-listen")
            else:
                self._put(CLEAR)  # what it heard while nobody listened is gone
        self._listening = listening

    def feed(self, window: Window) -> None:
        """Called with every window, in order, on the event loop."""
        if not self.watches:
            return
        if self._listening:
            self._put(window)
        else:
            self._offer(_Job(window))

    def clear_audio(self) -> None:
        """``input_audio_buffer.clear``: the segmenter forgets what it holds."""
        if self._listening:
            self._put(CLEAR)

    async def close(self) -> None:
        tasks = [t for t in (self._worker, self._listener) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._job = None

    def _put(self, item: Window | None) -> None:
        try:
            self._audio.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("watches are %d windows behind; a window is dropped", FEED_QUEUE)

    async def _listen(self) -> None:
        """Every window's audio through the segmenter, in order, off the event loop."""
        segmenter = await asyncio.to_thread(Segmenter)
        while True:
            window = await self._audio.get()
            if window is CLEAR:
                await asyncio.to_thread(segmenter.reset)
                continue
            heard: list[Utterance] = []
            if window.audio.size or window.final:
                t = window.end - window.audio.size / AUDIO_RATE
                heard = await asyncio.to_thread(segmenter.feed, window.audio, t, window.final)
            self._offer(_Job(window, heard))

    def _offer(self, job: _Job) -> None:
        """Latest wins: ``job`` replaces one still waiting, and keeps what it heard."""
        if self._job is not None:
            self.dropped += 1
            job.heard = [*self._job.heard, *job.heard][-MAX_HEARD:]
        self._job = job
        self._ready.set()

    async def _work(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            job, self._job = self._job, None
            if job is None:
                continue
            try:
                await self._check(job)
            except Exception:  # a bug: say so, and keep watching
                log.exception("watches failed on window %d", job.window.index)

    async def _check(self, job: _Job) -> None:
        watches = self.watches
        seen = await self._look(watches, job)
        self.checked += 1
        for watch in watches:
            verdict = _verdict(watch, job, seen)
            state = self.states.get(watch.id)
            if verdict is None or state is None or watch not in self.watches:
                continue  # unknown this window, or the watch changed meanwhile
            holds, start, end = verdict
            if state.step(holds, job.window.end):
                self.fire(Firing(watch, start, end, self.dropped))

    async def _look(self, watches: tuple[Watch, ...], job: _Job) -> dict[Key, Any]:
        """Every model call the watches need for this window, each once, at the same time."""
        image = None
        if job.window.frame is not None and any(w.modality == "image" for w in watches):
            image = await self._guard(asyncio.to_thread(job.window.frame.image), "frame")
        looks: dict[Key, Callable[[], Awaitable[Any]]] = {}
        for watch in watches:
            for key, look in self._looks(watch, job, image):
                looks.setdefault(key, look)
        got = await asyncio.gather(*(self._guard(look(), str(key)) for key, look in
                                     looks.items()))
        return dict(zip(looks, got, strict=True))

    def _looks(self, watch: Watch, job: _Job,
               image: RGB | None) -> list[tuple[Key, Callable[[], Awaitable[Any]]]]:
        model, look = watch.model, self.looker
        assert model is not None
        if watch.kind == "speech_contains":
            return [(_key(watch, i), partial(look.heard, model, utt.audio))
                    for i, utt in enumerate(job.heard)]
        if image is None:
            return []
        if watch.kind == "text_contains":
            return [(_key(watch), partial(look.text_in_view, model, image))]
        if watch.kind == "face":
            return [(_key(watch), partial(look.faces, model, image))]
        return [(_key(watch), partial(look.holds, model, watch.target, image))]

    async def _guard(self, call: Awaitable[Any], what: str) -> Any:
        """``call``'s result; ``None`` (counted, logged) when it fails."""
        try:
            return await call
        except Exception as exc:
            self.failed += 1
            log.warning("watches: %s failed: %s", what, exc)
            return None


def _key(watch: Watch, utterance: int = 0) -> Key:
    """A model call's key: shared by every watch of a kind and model, except a condition's."""
    if watch.kind == "condition":
        return ("condition", watch.id)
    return (watch.kind, watch.model, utterance)


def _verdict(watch: Watch, job: _Job, seen: dict[Key, Any]) -> Verdict | None:
    """Whether ``watch``'s condition holds in ``job`` (``None``: this window cannot tell)."""
    window = job.window
    if watch.kind == "speech_contains":
        texts = [seen.get(_key(watch, i)) for i in range(len(job.heard))]
        for utt, text in zip(job.heard, texts, strict=True):
            if text is not None and norm(watch.target) in text:
                return True, utt.start, utt.end
        if not window.audio.size and not job.heard or job.heard and None in texts:
            return None
        return False, window.start, window.end
    got = seen.get(_key(watch))
    if got is None:
        return None
    if watch.kind == "text_contains":
        holds = norm(watch.target) in got
    elif watch.kind == "face":
        holds = (got > 0) == (watch.target == "appears")
    else:
        holds = bool(got)
    return holds, window.start, window.end
