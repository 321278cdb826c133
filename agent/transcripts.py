"""What the user said: each committed or voice-detected utterance, transcribed by a pool model.

A session turns it on with a transcription model (realtime ``audio.input.transcription``,
Gemini ``inputAudioTranscription``). Utterances end two ways:

- **Commits** (no turn detection): the audio since the last ``input_audio_buffer.commit`` is
  one utterance (at most ``MAX_UTTERANCE_S``; older audio is let go and counted).
- **Server VAD** (``turn_detection: {"type": "server_vad"}``): silero-vad finds them, as the
  speech handler does, from the same pass over the session's audio (``Segmenter(stream=...)``:
  one VAD run per 32 ms however many segmenters listen); each is committed on its own, and
  transcribed without the silence that ended it (``Utterance.voiced``).

Each utterance is a user item; its transcript streams to the protocol (``Listener``) and joins
the conversation as the user's words, so the next answer is to what was said. With server VAD
the start of speech is told as soon as the window that holds it is heard, before the utterance
ends (``Listener.started``; the conversation interrupts its answer then, as OpenAI's
``interrupt_response`` does), and its end as soon as the silence that ends it is heard, while
the utterance before it may still be being transcribed. The transcriber hears the audio as it
is received, not when its window closes, so a turn ends as soon as its silence is heard. The
VAD runs off the event loop (the audio received meanwhile in one call); the transcripts come
one utterance at a time, in order. At most ``QUEUE_S`` seconds of audio wait for the VAD
(more is dropped and counted), and at most ``TRANSCRIBING`` utterances for their transcript
(then the VAD waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent import turns
from agent.engine import ModelRequest
from agent.errors import StreamAgentError
from agent.ids import new_id
from agent.media import AUDIO_RATE
from agent.parts import text_only
from agent.pool import Pool
from agent.vad import Segmenter, Utterance

log = logging.getLogger(__name__)
MAX_UTTERANCE_S = 30.0
"""The longest utterance kept: commit-mode audio beyond it is let go, oldest first."""
QUEUE_S = 64.0
"""Seconds of received audio waiting for the transcriber's VAD."""
QUEUE_ITEMS = 4096
"""Pieces of audio, commits and ends waiting for it, however short the pieces."""
DEFAULT_TRANSCRIBER = "default"
"""A transcription model as clients name one by default (OpenAI's names): the embedded ``asr``
if the pool has it, else none."""
TRANSCRIBING = 8
"""Utterances (each at most ``MAX_UTTERANCE_S`` of audio) waiting for their transcript."""
WAIT_S = 10.0
"""The longest a question waits for the transcripts of utterances committed before it."""


@dataclass(frozen=True, slots=True)
class Vad:
    """Server VAD settings, as the realtime ``turn_detection`` gives them."""

    threshold: float = 0.5
    silence_s: float = 0.5
    prefix_s: float = 0.3
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str | None = None
    """``semantic_vad``'s (``low``, ``medium``, ``high``, ``auto``): a pause of
    ``turns.PAUSE_S`` ends the turn when the end-of-turn model hears it as finished, and
    ``silence_s`` is the longest pause that does not. ``None``: server VAD, silence alone."""


@dataclass(frozen=True, slots=True)
class Heard:
    """One utterance: its user item's id and its span in media time (seconds)."""

    item_id: str
    start: float
    end: float


class Listener:
    """How a protocol shows what was heard, and problems outside any response; every method
    is awaited in order."""

    async def started(self, item_id: str, start: float) -> None:
        """The server's VAD heard speech begin at media time ``start`` (seconds); the user item
        ``item_id`` will hold it. ``speech`` follows when it ends."""

    async def speech(self, heard: Heard, vad: bool) -> None:
        """An utterance ended (``vad``: found by the server's VAD, not committed by the client):
        its user item exists now."""

    async def delta(self, heard: Heard, text: str) -> None:
        """A piece of its transcript."""

    async def transcribed(self, heard: Heard, transcript: str) -> None:
        """Its whole transcript."""

    async def failed(self, heard: Heard, error: StreamAgentError) -> None:
        """It could not be transcribed."""

    async def error(self, error: StreamAgentError) -> None:
        """A problem outside any response (a watch's webhook failed); the session goes on.
        A protocol without error events leaves it to the log."""


class Transcriber:
    """One session's utterances and their transcripts."""

    def __init__(self, pool: Pool, session_id: str, model: str, listener: Listener,
                 on_words: Callable[[Heard, str], Awaitable[None]], vad: Vad | None = None,
                 on_speech: Callable[[], Awaitable[None]] | None = None) -> None:
        """``on_words(heard, transcript)``: the conversation takes the user's words;
        ``on_speech()``: the server's VAD heard the user start to speak."""
        self.pool, self.session_id, self.model = pool, session_id, model
        self.listener, self.on_words, self.vad = listener, on_words, vad
        self.on_speech = on_speech
        self.segmenter = Segmenter(
            threshold=vad.threshold, min_silence_s=vad.silence_s, pre_roll_s=vad.prefix_s,
            max_utterance_s=MAX_UTTERANCE_S, stream=session_id, pause_s=turns.PAUSE_S,
            turn_over=turns.turn_over if vad.eagerness else None) if vad else None
        self._audio: list[np.ndarray] = []
        self._start: float | None = None
        self._queue: asyncio.Queue[tuple[np.ndarray, float] | str | float] = asyncio.Queue()
        self._queued = 0  # samples in the queue
        self._said: asyncio.Queue[tuple[Heard, np.ndarray]] = asyncio.Queue(TRANSCRIBING)
        self._speaking: str | None = None  # the item of the utterance under way, once told
        self._pending: dict[str, asyncio.Event] = {}  # committed items not transcribed yet
        self.dropped = 0
        """Pieces of audio let go because the transcriber fell ``QUEUE_S`` behind."""
        self.cut_s = 0.0
        """Seconds of commit-mode audio let go past ``MAX_UTTERANCE_S``."""
        self._task = asyncio.create_task(self._run(), name=f"hear-{session_id}")
        self._words = asyncio.create_task(self._transcribe(), name=f"transcribe-{session_id}")

    @property
    def busy(self) -> bool:
        """Whether utterances committed so far are still being transcribed."""
        return bool(self._pending)

    def hear(self, audio: np.ndarray, t: float) -> None:
        """Audio as received (16 kHz), its first sample at media time ``t``."""
        if audio.size:
            self._put((audio, t))

    def end_utterance(self, t: float) -> None:
        """The audio so far is all there is for now (a commit, the stream's end): with server
        VAD, an utterance under way ends at media time ``t``."""
        if self.segmenter is not None:
            self._put(t)

    def commit(self) -> str:
        """End the utterance now (``input_audio_buffer.commit``); its user item's id."""
        item_id = new_id("item")
        self._pending[item_id] = asyncio.Event()
        self._put(item_id)
        return item_id

    def _put(self, item: tuple[np.ndarray, float] | str | float) -> None:
        size = item[0].size if isinstance(item, tuple) else 0
        if self._queue.qsize() >= QUEUE_ITEMS or self._queued + size > QUEUE_S * AUDIO_RATE:
            self.dropped += 1
            if isinstance(item, str):  # a commit is never dropped: it ends as empty
                self._pending.pop(item).set()
            log.warning("session %s: the transcriber is %g s behind; audio is dropped",
                        self.session_id, QUEUE_S)
            return
        self._queued += size
        self._queue.put_nowait(item)

    def clear(self) -> None:
        """Forget the audio not yet in an utterance (``input_audio_buffer.clear``)."""
        self._audio, self._start, self._speaking = [], None, None
        if self.segmenter is not None:
            self.segmenter.reset()

    async def settled(self, timeout_s: float = WAIT_S) -> None:
        """Wait until every utterance committed so far is transcribed (or ``timeout_s``)."""
        waits = [e.wait() for e in self._pending.values()]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), timeout_s)

    async def close(self) -> None:
        for task in (self._task, self._words):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for done in self._pending.values():
            done.set()

    async def _run(self) -> None:
        """Audio, commits and ends, in order (what came meanwhile together): each ended
        utterance is told, then waits for its transcript."""
        if self.vad is not None and self.vad.eagerness:
            await asyncio.to_thread(turns.load_turn_model)  # before the first pause, not at it
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            pieces: list[tuple[np.ndarray, float]] = []
            for item in items:
                if isinstance(item, tuple):
                    self._queued -= item[0].size
                    pieces.append(item)
                    continue
                await self._heard(pieces)
                pieces = []
                if isinstance(item, str):
                    start, end, audio = self._take()
                    await self._ended(Heard(item, start, end), audio, vad=False)
                elif self.segmenter is not None:  # an end (put only with server VAD)
                    await self._segment(self.segmenter.finish, item)
            await self._heard(pieces)

    async def _heard(self, pieces: list[tuple[np.ndarray, float]]) -> None:
        if not pieces:
            return
        if self.segmenter is not None:
            await self._segment(self.segmenter.hear, pieces)
        else:
            for audio, t in pieces:
                self._keep(audio, t)

    async def _segment(self, step: Callable[[Any], list[Utterance]], arg: Any) -> None:
        """``step(arg)`` of the segmenter (``hear`` or ``finish``) off the loop; tell the
        utterances it ended, and the start of the one under way."""
        assert self.segmenter is not None
        for utt in await asyncio.to_thread(step, arg):
            item_id = await self._started(utt.start)
            self._speaking = None
            await self._ended(Heard(item_id, utt.start, utt.end), utt.voiced, vad=True)
        if (since := self.segmenter.speaking_since) is not None:
            await self._started(since)

    async def _started(self, start: float) -> str:
        """The item of the utterance under way; told (and answered) the first time."""
        if self._speaking is None:
            self._speaking = new_id("item")
            await self.listener.started(self._speaking, start)
            if self.on_speech is not None:
                await self.on_speech()
        return self._speaking

    async def _ended(self, heard: Heard, audio: np.ndarray, vad: bool) -> None:
        try:
            await self.listener.speech(heard, vad)
        except BaseException:
            self._done(heard)
            raise
        await self._said.put((heard, audio))

    def _keep(self, audio: np.ndarray, t: float) -> None:
        if self._start is None:
            self._start = t
        self._audio.append(audio)
        over = sum(a.size for a in self._audio) - int(MAX_UTTERANCE_S * AUDIO_RATE)
        while over > 0 and self._audio:
            first = self._audio[0]
            cut = min(over, first.size)
            self._audio[0] = first[cut:]
            if not self._audio[0].size:
                self._audio.pop(0)
            self._start += cut / AUDIO_RATE
            self.cut_s += cut / AUDIO_RATE
            over -= cut

    def _take(self) -> tuple[float, float, np.ndarray]:
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        start = self._start or 0.0
        self._audio, self._start = [], None
        return start, start + audio.size / AUDIO_RATE, audio

    async def _transcribe(self) -> None:
        while True:
            heard, audio = await self._said.get()
            try:
                await self._utterance(heard, audio)
            finally:
                self._done(heard)

    def _done(self, heard: Heard) -> None:
        done = self._pending.pop(heard.item_id, None)
        if done is not None:
            done.set()

    async def _utterance(self, heard: Heard, audio: np.ndarray) -> None:
        words: list[str] = []
        if audio.size:
            request = ModelRequest(audio=audio, session=self.session_id)
            try:
                async for piece in text_only(self.pool.stream(self.model, request)):
                    words.append(piece)
                    await self.listener.delta(heard, piece)
            except StreamAgentError as exc:
                await self.listener.failed(heard, exc)
                return
        transcript = "".join(words).strip()
        await self.listener.transcribed(heard, transcript)
        await self.on_words(heard, transcript)
