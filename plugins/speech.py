"""Speech: utterances found by silero-vad, transcribed by pocketsphinx's bundled en-us model.

The recognizer hears each finished utterance once, without most of the silence that ended it
(``Utterance.voiced``: 0.3 s of it kept), with the search settings in ``DECODER``: less
recognizer CPU at the same word accuracy on the benchmark's voices and the Debian test
recordings (benchmarks/listening.py, docs/performance.md). Keeping 0.15 s saved a little more
and lost words; capping the search (``maxhmmpf`` 3000) saved a third and lost more words.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal

from pydantic import Field

from agent import (
    AUDIO_RATE,
    Audio,
    Engine,
    EngineError,
    Handler,
    ModelConfig,
    ModelRequest,
    Options,
    Part,
    Question,
    Segmenter,
    TextDelta,
    Utterance,
    Window,
    float_to_pcm16,
    hookimpl,
    load_vad,
)

DECODER: dict[str, Any] = {"maxwpf": 10, "pbeam": 1e-44}
"""pocketsphinx settings other than its defaults (measured: benchmarks/listening.py).

At most 10 word exits per frame, and a phone-transition beam of 1e-44 (1e-48 by default):
14-27% less recognizer CPU (in several runs), with the very same words heard on every clip of the
benchmark and on 60 more flite clips. Cheaper settings lost words there: ``wbeam`` 1e-20 (35%
less; flite ``kal16`` 89.7% -> 85.3% on the other clips), ``maxhmmpf`` 5000 with it (50% less;
``kal`` 69.8% -> 62.9%), ``topn`` 2 or ``ds`` 2 (under 10% less; ``kal`` -7 to -10 points),
``fwdflat`` or ``bestpath`` off (20% less; ``kal`` -7 to -8 points), a tighter ``beam``.
"""
SEARCHES: dict[str, dict[str, Any]] = {"accurate": DECODER, "fast": {**DECODER, "wbeam": 1e-20}}
"""The engine's ``search`` option: ``fast`` adds the word beam of 1e-20, about a third less
recognizer CPU for 2-7 points of words on some voices (docs/performance.md)."""


PARENT_CHECK_S = 1.0
"""How often a worker looks whether its server is still there."""
SHARED_DECODES = 32
"""Recent decodes kept (their words) for a second request of the same audio."""


class PocketSphinxOptions(Options):
    search: Literal["accurate", "fast"] = "accurate"
    """``accurate``: ``DECODER``; ``fast``: a narrower word beam, less recognizer CPU at the
    cost of some words (``SEARCHES``). At the capacity benchmark's load it served no more
    sessions (docs/performance.md, "Talking sessions")."""
    nice: int = Field(default=10, ge=0, le=19)
    """How much lower the recognizer's processes run than the server (Unix ``nice``; 0: the
    same): work that must keep pace with the stream (reading frames, the event loop) goes
    first when the CPU is short, and the recognizer takes what is left, which on a machine
    that is not overloaded is all it needs. Measured (benchmarks/capacity.py, 12 talking
    sessions on 2 cores): 10 against 0, words read in time 67% -> 100%, transcript lag p95
    10.1 -> 9.7 s."""


class PocketSphinxEngine(Engine):
    """Transcribes 16 kHz audio; yields the words one by one.

    pocketsphinx holds the interpreter lock while it decodes, so threads would stall each
    other and the event loop: each worker is a process (one per core by default) with its own
    decoder. A closed stream waits for its decode to end, so the worker is free again by then.
    """

    kind = "pocketsphinx"
    options_model = PocketSphinxOptions
    decodes = 0
    """Utterances decoded (a request for audio decoded just before shares that decode)."""

    def default_workers(self) -> int:
        return os.cpu_count() or 1

    async def start(self) -> None:
        self._recent: OrderedDict[bytes, asyncio.Future[list[str]]] = OrderedDict()
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded server
        opts = PocketSphinxOptions.of(self.config.options)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_configure,
                                         initargs=(SEARCHES[opts.search], opts.nice))
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _decode, b"")
                               for _ in range(self.workers)))  # every worker loads now
        await asyncio.to_thread(load_vad)  # the speech handler's VAD loads with its engine
        self._loaded = True

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Part, None]:
        if request.audio is None or not request.audio.size:
            return
        pcm = float_to_pcm16(request.audio)
        decoding = self._decoding(pcm)
        try:
            words = await asyncio.shield(decoding)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await decoding
            raise
        for i, word in enumerate(words):
            yield TextDelta(word if i == 0 else " " + word)

    def _decoding(self, pcm: bytes) -> asyncio.Future[list[str]]:
        """The decode of ``pcm``: the one already under way or just done for the same audio
        (a session's speech handler and its transcriber cut the same utterance when their VAD
        settings agree, as they do by default), else a new one."""
        key = hashlib.blake2b(pcm, digest_size=16).digest()
        recent = self._recent
        decoding = recent.get(key)
        if decoding is None or decoding.done() and (decoding.cancelled()
                                                    or decoding.exception() is not None):
            decoding = asyncio.get_running_loop().run_in_executor(self._pool, _decode, pcm)
            self.decodes += 1
        recent[key] = decoding
        recent.move_to_end(key)
        while len(recent) > SHARED_DECODES:
            recent.popitem(last=False)
        return decoding

    async def check_health(self) -> None:
        pool = getattr(self, "_pool", None)
        if not getattr(self, "_loaded", False) or pool is None or pool._shutdown_thread:
            raise EngineError(f"model {self.name!r} is not running")

    async def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


_decoder: Any = None
_search: dict[str, Any] = DECODER


def _configure(search: dict[str, Any], nice: int = 0) -> None:
    """In a worker process, first: the search settings its decoder is built with, its
    priority, and a watch on the server that started it."""
    global _search
    _search = search
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    threading.Thread(target=_outlive_not, args=(os.getppid(),), daemon=True,
                     name="parent-watch").start()


def _outlive_not(parent: int) -> None:
    """End this worker when its server is gone (killed, crashed): its siblings hold the
    task queue's pipe open, so no end-of-file would ever tell it, and it would idle on with
    its decoder (about 190 MB) for good."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _decoder_setting(name: str) -> Any:
    """In a worker process: a setting of its decoder (built if it was not yet)."""
    _decode(b"")
    return _decoder.config[name]


def _decode(pcm: bytes) -> list[str]:
    """In a worker process: this process's decoder, built on first use."""
    global _decoder
    if _decoder is None:
        from pocketsphinx import Decoder

        _decoder = Decoder(samprate=AUDIO_RATE, loglevel="FATAL", **_search)
    if not pcm:
        return []
    _decoder.start_utt()
    _decoder.process_raw(pcm, False, False)
    _decoder.end_utt()
    hyp = _decoder.hyp()
    return hyp.hypstr.split() if hyp is not None else []


PRE_ROLL_S = 0.3
"""Audio kept before the speech starts: server VAD's default ``prefix_padding_ms`` (300), so
that with the default settings both cut the very same utterances and decode them once."""


class SpeechOptions(Options):
    """``handlers.speech.options``: how voice activity cuts utterances."""

    threshold: float = Field(default=0.5, gt=0, lt=1)
    """Speech probability (per 32 ms) that counts as speech."""
    min_silence_s: float = Field(default=0.5, gt=0)
    """Silence that ends an utterance."""
    max_utterance_s: float = Field(default=20.0, gt=0)
    """An utterance this long ends here."""


class SpeechHandler(Handler):
    """Live: one response per utterance, with what was said. Asked: what was said last."""

    name = "speech"
    options_model = SpeechOptions
    modality = "audio"
    default_model = "asr"
    feed_off_loop = True  # the VAD runs for every 32 ms of audio
    hears_on_arrival = True  # an utterance ends when its silence is heard
    speaks_live = False  # what the user said is shown, not said back

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = SpeechOptions.of(self.ctx.options)
        self.segmenter = Segmenter(threshold=opts.threshold, min_silence_s=opts.min_silence_s,
                                   pre_roll_s=PRE_ROLL_S, max_utterance_s=opts.max_utterance_s,
                                   stream=self.ctx.session_id)
        self.last_utterance: Utterance | None = None
        self.last_text: str | None = None

    def clear_audio(self) -> None:
        self.segmenter.reset()

    def hear(self, pieces: list[tuple[Audio, float]]) -> Utterance | None:
        return self._ended(self.segmenter.hear(pieces))

    def feed(self, window: Window) -> Utterance | None:
        """Its audio was heard as it came (``hear``); the stream's end ends an utterance."""
        return self._ended(self.segmenter.finish(window.end)) if window.final else None

    def _ended(self, done: list[Utterance]) -> Utterance | None:
        """The utterances that ended, as one (those that ended together are said together)."""
        if not done:
            return None
        utt = Utterance.joined(done)
        self.last_utterance, self.last_text = utt, None
        return utt

    async def transcribe(self, utt: Utterance) -> AsyncIterator[str]:
        words = []
        async for word in self.ctx.text(ModelRequest(audio=utt.voiced)):
            words.append(word)
            yield word
        if utt is self.last_utterance:
            self.last_text = "".join(words).strip()

    async def respond(self, work: Utterance) -> AsyncIterator[str]:
        async for word in self.transcribe(work):
            yield word

    async def answer(self, question: Question) -> AsyncIterator[str]:
        utt = self.last_utterance
        if utt is None:
            return
        if self.last_text is None:
            self.last_text = "".join([w async for w in self.transcribe(utt)]).strip()
        if self.last_text:
            yield f'Last heard: "{self.last_text}"'


@hookimpl
def register_engines(register: Any) -> None:
    register(PocketSphinxEngine)


@hookimpl
def register_models(register: Any) -> None:
    register("asr", ModelConfig(engine=PocketSphinxEngine.kind))


@hookimpl
def register_handlers(register: Any) -> None:
    register(SpeechHandler)
