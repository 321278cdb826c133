"""Speech out on the realtime wire: ``output_modalities`` and ``audio.output`` (format, voice,
speed) as the conversation's speech, the session object's view of it, and G.711 for
``audio/pcmu`` and ``audio/pcma``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import av
import numpy as np

from agent.errors import InvalidMedia
from agent.protocols.realtime import wire
from agent.voice import OUTPUT_RATE, Speech, SpeechChange

G711_RATE = 8000
FORMATS = {"audio/pcm": "pcm16", "pcm16": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
"""Output format types (GA, and beta's ``pcm16``) and the encoding each is."""
TYPES = {"pcm16": "audio/pcm", "pcmu": "audio/pcmu", "pcma": "audio/pcma"}
_CODECS = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}


def spoken(modalities: Sequence[str] | None) -> bool | None:
    """``output_modalities`` as whether to speak (``None``: unchanged). Audio always comes with
    its transcript, so ``["text", "audio"]`` is spoken too, as OpenAI's beta did."""
    return None if modalities is None else "audio" in modalities


def speech_change(params: wire.SessionParams, where: str = "session") -> SpeechChange | None:
    """What a ``session.update`` changes about speech (``None``: nothing)."""
    out = params.audio.output if params.audio else None
    on = spoken(params.output_modalities)
    if out is None:
        return None if on is None else SpeechChange(on=on, param=f"{where}.output_modalities")
    encoding = rate = None
    if out.format is not None:
        encoding = FORMATS.get(out.format.type)
        if encoding is None:
            raise InvalidMedia(f"unsupported output audio format {out.format.type!r}; use "
                               "audio/pcm, audio/pcmu or audio/pcma",
                               param=f"{where}.audio.output.format.type")
        if encoding == "pcm16" and out.format.rate != OUTPUT_RATE:
            raise InvalidMedia(f"output audio/pcm is at {OUTPUT_RATE} Hz, not "
                               f"{out.format.rate}", param=f"{where}.audio.output.format.rate")
        rate = OUTPUT_RATE if encoding == "pcm16" else G711_RATE
    voice = out.voice.id if isinstance(out.voice, wire.VoiceId) else out.voice
    return SpeechChange(on=on, voice=voice, speed=out.speed, rate=rate, encoding=encoding,
                        param=f"{where}.audio.output.voice")


def listening_speaks(params: wire.SessionParams, change: SpeechChange | None,
                     voiced: bool) -> SpeechChange | None:
    """Speech for a session that sets turn detection (server VAD, or ``null`` / ``false``: its
    own) without ever choosing ``output_modalities``: it talks with someone, so its answers
    are spoken, as OpenAI's default (``["audio"]``) speaks them. Pipecat asks for audio only in
    some of its ``response.create``: without this, server VAD's responses, and those it asks
    for after its own turn detection, reach it as text and its user hears nothing.
    ``voiced``: a voice is installed (else text, as before)."""
    audio_in = params.audio.input if params.audio else None
    if not voiced or audio_in is None or "turn_detection" not in audio_in.model_fields_set:
        return change
    if change is None:
        return SpeechChange(on=True, param="session.audio.input.turn_detection")
    return change if change.on is not None else replace(change, on=True)


def modalities(speech: Speech | None) -> list[str]:
    return ["audio"] if speech is not None and speech.on else ["text"]


def output_object(speech: Speech | None) -> dict[str, Any]:
    """The session object's ``audio.output`` (empty: no voice is installed)."""
    if speech is None:
        return {}
    fmt: dict[str, Any] = {"type": TYPES[speech.encoding]}
    if speech.encoding == "pcm16":
        fmt["rate"] = speech.rate
    return {"output": {"format": fmt, "voice": speech.voice.name, "speed": speech.speed}}


def encode(pcm16: bytes, encoding: str) -> bytes:
    """Speech for the wire: PCM16 as it is, or G.711 (PyAV's encoders; 8 kHz PCM16 in)."""
    if encoding == "pcm16" or not pcm16:
        return pcm16
    codec = av.CodecContext.create(_CODECS[encoding], "w")
    codec.sample_rate, codec.format, codec.layout = G711_RATE, "s16", "mono"  # type: ignore[attr-defined]
    frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm16, dtype="<i2").reshape(1, -1),
                                       format="s16", layout="mono")
    frame.sample_rate = G711_RATE
    return b"".join(bytes(p) for p in codec.encode(frame))  # type: ignore[attr-defined]
