"""Speech out: voices, and ``speak``, which says an answer's sentences while its text streams.

Plugins register voices with the ``register_voices(register)`` hook. A session that asks for
audio names one, or one of OpenAI's or Gemini's own voice names (``alloy``, ``Puck``, ...),
which the default voice speaks. ``speak`` wraps a response's parts: the text goes on as it
comes, and each sentence, once it ends, follows as ``AudioChunk`` parts, so speech starts with
the first sentence and not after the whole answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import soxr

from agent.errors import EngineError, InvalidRequest
from agent.parts import AudioChunk, Part, TextDelta, as_part

OUTPUT_RATE = 24000
"""What OpenAI Realtime (``audio/pcm``) and Gemini Live send: PCM16 at 24 kHz."""
MAX_SENTENCE_CHARS = 200
"""A sentence longer than this is said in pieces (cut at a comma or a space), so one
synthesis stays short and speech starts soon whatever the model writes."""
CHUNK_S = 0.5
"""Audio is passed on in pieces of at most this many seconds (one wire event each)."""
PRESETS = frozenset(name.lower() for name in (
    # OpenAI Realtime
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
    # Gemini Live (speechConfig.voiceConfig.prebuiltVoiceConfig.voiceName)
    "Zephyr", "Puck", "Charon", "Kore", "Fenrir", "Leda", "Orus", "Aoede", "Callirrhoe",
    "Autonoe", "Enceladus", "Iapetus", "Umbriel", "Algieba", "Despina", "Erinome", "Algenib",
    "Rasalgethi", "Laomedeia", "Achernar", "Alnilam", "Schedar", "Gacrux", "Pulcherrima",
    "Achird", "Zubenelgenubi", "Vindemiatrix", "Sadachbia", "Sadaltager", "Sulafat"))
"""Voice names of the services we stand in for: clients send them by default, and the
default voice speaks for each."""
_SYNTH = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="voice")
"""Synthesis runs here, off the event loop and apart from the loop's default executor (which
decodes pictures), one sentence per thread."""


class Voice:
    """A way to say text. ``synthesize`` is blocking (CPU or a subprocess): ``speak`` runs it
    on a thread of its own, one sentence at a time."""

    name: str = ""
    description: str = ""

    def synthesize(self, text: str, speed: float = 1.0) -> AudioChunk:
        """``text`` spoken: 16-bit mono PCM at the voice's own rate, with ``text`` as its
        transcript. ``speed``: 0.25 to 1.5 (1 is the voice's own pace)."""
        raise NotImplementedError


class ModelVoice(Voice):
    """A model's own voice (``voices.NAME: {engine: model, model: M, options: {speaker: S}}``):
    answers of model ``M`` come spoken by the model itself, as its speaker ``S`` (an omni
    checkpoint with its talker, ``options.speech`` on the transformers engine). What another
    model says (another handler's answer) is said by ``fallback``, the server's default voice
    among the others."""

    def __init__(self, name: str, model: str, speaker: str, description: str = "") -> None:
        self.name = name
        self.model = model
        self.speaker = speaker
        self.description = description or f"model {model}'s own voice, speaker {speaker}"
        self.fallback: Voice | None = None

    def synthesize(self, text: str, speed: float = 1.0) -> AudioChunk:
        if self.fallback is None:
            raise EngineError(f"voice {self.name!r} speaks only model {self.model!r}'s "
                              "answers, and no other voice is installed to say the rest")
        return self.fallback.synthesize(text, speed)


def speaker(speech: Speech | None) -> tuple[str, str] | None:
    """``(model, speaker)`` when ``speech`` is a model's own voice (``ResponseOptions.speaker``)."""
    voice = speech.voice if speech is not None else None
    return (voice.model, voice.speaker) if isinstance(voice, ModelVoice) else None


@dataclass(frozen=True, slots=True)
class Speech:
    """How a conversation's responses are spoken (when ``on``)."""

    voice: Voice
    on: bool = False
    rate: int = OUTPUT_RATE
    """The rate of the ``AudioChunk`` parts ``speak`` yields."""
    speed: float = 1.0
    encoding: str = "pcm16"
    """What the wire carries: ``pcm16`` (16-bit LE), or G.711 ``pcmu`` / ``pcma`` at 8 kHz."""


Voices = Callable[[str | None], Voice]
"""Finds a voice by name (``None``: the default), or raises ``InvalidRequest``."""


@dataclass(frozen=True, slots=True)
class SpeechChange:
    """What a client changed about speech; ``None``: as it was."""

    on: bool | None = None
    voice: str | None = None
    speed: float | None = None
    rate: int | None = None
    encoding: str | None = None
    param: str = "session.audio.output.voice"
    """Where speech or the voice was asked for, named in errors."""

    def apply(self, current: Speech | None, voices: Voices) -> Speech | None:
        """``current`` changed (``None``: no voice is installed, so only text is possible)."""
        if current is None:
            if self.on:
                raise InvalidRequest("no voice is installed, so this server answers in text "
                                     "only", param=self.param)
            return None
        try:
            voice = current.voice if self.voice is None else voices(self.voice)
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message, param=self.param) from None
        return replace(
            current, voice=voice,
            on=current.on if self.on is None else self.on,
            speed=current.speed if self.speed is None else self.speed,
            rate=current.rate if self.rate is None else self.rate,
            encoding=current.encoding if self.encoding is None else self.encoding)


def pick_voice(voices: dict[str, Voice], name: str | None, default: str | None) -> Voice:
    """The voice named ``name``; ``None`` or a preset name: ``default`` (``None``: the first
    voice by name)."""
    if not voices:
        raise InvalidRequest("no voice is installed, so this server answers in text only")
    if name is not None and name in voices:
        return voices[name]
    if name is None or name.lower() in PRESETS:
        return voices[default or min(voices)]
    raise InvalidRequest(f"unknown voice {name!r}; voices: {', '.join(sorted(voices))} (or "
                         "one of OpenAI's or Gemini's voice names, said by the default voice)")


_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?:\s+|$)|\n\s*")
_WORD = re.compile(r"\w")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class Sentences:
    """Cuts streamed text into sentences, keeping every character (the pieces join back into
    the text): at ``.``, ``!`` or ``?`` followed by a space or ending the text so far (but
    after a digit, which may go on as ``3.5``), and at a new line. A sentence that grows past
    ``cap`` characters is cut at its last comma or space. Text without a word waits for the
    next sentence."""

    def __init__(self, cap: int = MAX_SENTENCE_CHARS) -> None:
        self.cap = cap
        self.text = ""

    def feed(self, text: str) -> list[str]:
        self.text += text
        out = []
        while cut := self._cut():
            out.append(self.text[:cut])
            self.text = self.text[cut:]
        return out

    def end(self) -> list[str]:
        """The rest, once the text is complete."""
        rest, self.text = self.text, ""
        return [rest] if _WORD.search(rest) else []

    def _cut(self) -> int:
        for end in _END.finditer(self.text):
            at_end = end.end() == len(self.text) and not end.group()[-1].isspace()
            if at_end and end.start() and self.text[end.start() - 1].isdigit():
                break
            if _WORD.search(self.text, 0, end.start()):
                return end.end()
        if len(self.text) > self.cap:
            head = self.text[:self.cap]
            for sep in (", ", "; ", ": ", " "):
                if (i := head.rfind(sep)) > 0:
                    return i + len(sep)
            return self.cap
        return 0


def resample(pcm16: bytes, rate: int, to: int) -> bytes:
    """16-bit mono PCM from ``rate`` to ``to`` Hz (soxr, high quality)."""
    if rate == to or not pcm16:
        return pcm16
    out: np.ndarray = soxr.resample(np.frombuffer(pcm16, dtype="<i2"), rate, to)
    return out.astype("<i2").tobytes()


def render(text: str, speech: Speech) -> bytes:
    """On a synthesis thread: ``text`` spoken at ``speech.rate``."""
    said = speech.voice.synthesize(_CONTROL.sub(" ", text).strip(), speech.speed)
    return resample(said.pcm16, said.rate, speech.rate)


async def say(text: str, speech: Speech) -> list[AudioChunk]:
    """``text`` spoken, in pieces of at most ``CHUNK_S``; the first carries ``text`` as its
    transcript (one with no sound when the voice said nothing)."""
    pcm = await asyncio.get_running_loop().run_in_executor(_SYNTH, render, text, speech)
    return chunked(pcm, speech.rate, text)


def chunked(pcm16: bytes, rate: int, transcript: str) -> list[AudioChunk]:
    """Speech in pieces of at most ``CHUNK_S`` (one wire event each), the first carrying
    ``transcript`` (one with no sound when there is none)."""
    step = 2 * max(1, int(rate * CHUNK_S))
    return [AudioChunk(pcm16[i:i + step], rate, transcript if i == 0 else "")
            for i in range(0, max(len(pcm16), 1), step)]


async def speak(parts: AsyncIterator[str | Part], speech: Speech) -> AsyncIterator[Part]:
    """``parts`` passed on, each sentence of their text followed by itself spoken
    (``AudioChunk`` parts at ``speech.rate``). A model that speaks itself (its own
    ``AudioChunk`` parts) is passed on, resampled, and not spoken over. Closing this stream
    (a cancel) stops at once and closes ``parts``; a synthesis under way finishes on its
    thread, unheard."""
    sentences, own_voice = Sentences(), False
    try:
        async for item in parts:
            part = as_part(item)
            if isinstance(part, AudioChunk):
                own_voice = True
                yield AudioChunk(resample(part.pcm16, part.rate, speech.rate), speech.rate,
                                 part.transcript)
                continue
            yield part
            if isinstance(part, TextDelta) and not own_voice:
                for sentence in sentences.feed(part.text):
                    for chunk in await say(sentence, speech):
                        yield chunk
        for sentence in [] if own_voice else sentences.end():
            for chunk in await say(sentence, speech):
                yield chunk
    finally:
        aclose = getattr(parts, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
