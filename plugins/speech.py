"""Speech: utterances found by silero-vad, transcribed by pocketsphinx's bundled en-us model."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from agent import (
    AUDIO_RATE,
    Handler,
    ModelConfig,
    ModelRequest,
    Question,
    ThreadedEngine,
    Window,
    hookimpl,
)
from plugins import vad


class PocketSphinxEngine(ThreadedEngine):
    """Transcribes 16 kHz audio; yields the words one by one."""

    kind = "pocketsphinx"
    parallel = True  # one decoder per worker thread

    def load(self) -> None:
        self.per_thread(self._decoder)
        vad.load()  # the speech handler's VAD model loads with its engine, not mid-session

    @staticmethod
    def _decoder() -> Any:
        from pocketsphinx import Decoder

        return Decoder(samprate=AUDIO_RATE, loglevel="FATAL")

    def generate(self, request: ModelRequest, cancelled: threading.Event) -> Iterator[str]:
        if request.audio is None or not request.audio.size:
            return
        decoder = self.per_thread(self._decoder)
        pcm = (np.clip(request.audio, -1, 1) * 32767).astype("<i2").tobytes()
        decoder.start_utt()
        step = AUDIO_RATE * 2  # 1 s of PCM16 per call, so a cancel is noticed quickly
        for i in range(0, len(pcm), step):
            if cancelled.is_set():
                decoder.end_utt()
                return
            decoder.process_raw(pcm[i:i + step], False, False)
        decoder.end_utt()
        hyp = decoder.hyp()
        words = hyp.hypstr.split() if hyp is not None else []
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word


class SpeechHandler(Handler):
    """Live: one response per utterance, with what was said. Asked: what was said last."""

    name = "speech"
    modality = "audio"
    default_model = "asr"
    feed_off_loop = True  # the VAD runs for every 32 ms of audio

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.ctx.options
        self.segmenter = vad.Segmenter(
            threshold=float(opts.get("threshold", 0.5)),
            min_silence_s=float(opts.get("min_silence_s", 0.5)),
            max_utterance_s=float(opts.get("max_utterance_s", 20.0)),
        )
        self.last_utterance: vad.Utterance | None = None
        self.last_text: str | None = None

    def clear_audio(self) -> None:
        self.segmenter.reset()

    def feed(self, window: Window) -> vad.Utterance | None:
        t = window.end - window.audio.size / AUDIO_RATE
        done = self.segmenter.feed(window.audio, t, final=window.final)
        if not done:
            return None
        utt = done[0] if len(done) == 1 else vad.Utterance(
            done[0].start, done[-1].end, np.concatenate([u.audio for u in done]))
        self.last_utterance, self.last_text = utt, None
        return utt

    async def transcribe(self, utt: vad.Utterance) -> AsyncIterator[str]:
        words = []
        async for word in self.ctx.stream(ModelRequest(audio=utt.audio)):
            words.append(word)
            yield word
        if utt is self.last_utterance:
            self.last_text = "".join(words).strip()

    async def respond(self, work: vad.Utterance) -> AsyncIterator[str]:
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
