"""Speech out on the Gemini Live wire: ``generationConfig.responseModalities: ["AUDIO"]`` and
its ``speechConfig`` as the conversation's speech, and each piece of speech as Gemini sends it
(``inlineData`` audio in ``modelTurn``, its words in ``outputTranscription``)."""

from __future__ import annotations

import base64
from typing import Any

from agent.errors import InvalidRequest
from agent.parts import AudioChunk
from agent.transcripts import Vad
from agent.voice import SpeechChange

MODALITIES = ("TEXT", "AUDIO")


def _pick(obj: Any, camel: str) -> Any:
    """A field under its camelCase or snake_case name (the SDK mixes both)."""
    if not isinstance(obj, dict):
        return None
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return obj.get(camel, obj.get(snake))


def speech_change(setup: dict[str, Any]) -> SpeechChange | None:
    """``responseModalities`` (``AUDIO``: spoken; ``TEXT``: not; absent: text) and the
    prebuilt voice's name (``None``: nothing said about speech)."""
    config = _pick(setup, "generationConfig")
    modalities = _pick(config, "responseModalities")
    voice = _pick(_pick(_pick(_pick(config, "speechConfig"), "voiceConfig"),
                        "prebuiltVoiceConfig"), "voiceName")
    if modalities is None and voice is None:
        return None
    names = [str(m).upper() for m in modalities or []]
    if unknown := [m for m in names if m not in MODALITIES]:
        raise InvalidRequest(f"responseModalities {unknown} are not served; use TEXT or AUDIO",
                             param="setup.generationConfig.responseModalities")
    return SpeechChange(on=None if modalities is None else "AUDIO" in names,
                        voice=None if voice is None else str(voice),
                        param="setup.generationConfig.speechConfig")


def transcribed(setup: dict[str, Any]) -> bool:
    """Whether the client asked for the words of the speech (``outputAudioTranscription``)."""
    return _pick(setup, "outputAudioTranscription") is not None


def audio_messages(chunk: AudioChunk, transcribe: bool) -> list[dict[str, Any]]:
    """A piece of speech as ``serverContent`` messages: the audio, then (when asked for, and
    with a sentence's first piece) its words."""
    out: list[dict[str, Any]] = []
    if chunk.pcm16:
        blob = {"mimeType": f"audio/pcm;rate={chunk.rate}",
                "data": base64.b64encode(chunk.pcm16).decode()}
        out.append({"serverContent": {"modelTurn": {"parts": [{"inlineData": blob}]}}})
    if transcribe and chunk.transcript:
        out.append({"serverContent": {"outputTranscription": {"text": chunk.transcript}}})
    return out


START_THRESHOLD = {"START_SENSITIVITY_HIGH": 0.3, "START_SENSITIVITY_LOW": 0.7}
END_SILENCE_S = {"END_SENSITIVITY_HIGH": 0.4, "END_SENSITIVITY_LOW": 1.2}
DEFAULT_SILENCE_S = 0.8
"""The silence that ends a turn when the client names no sensitivity (Gemini documents none)."""


def activity_detection(setup: dict[str, Any]) -> Vad | None:
    """``realtimeInputConfig``: Gemini Live's automatic activity detection (on unless
    ``automaticActivityDetection.disabled``) as server VAD: the end of the user's speech asks
    the question; ``activityHandling: NO_INTERRUPTION`` lets an answer finish under new
    speech. ``None``: the client marks its turns (``activityStart`` / ``activityEnd``)."""
    config = _pick(setup, "realtimeInputConfig") or {}
    detection = _pick(config, "automaticActivityDetection") or {}
    if not isinstance(config, dict) or not isinstance(detection, dict):
        raise InvalidRequest("realtimeInputConfig and its automaticActivityDetection are "
                             "objects", param="setup.realtimeInputConfig")
    if _pick(detection, "disabled"):
        return None
    silence_ms = _pick(detection, "silenceDurationMs")
    prefix_ms = _pick(detection, "prefixPaddingMs")
    handling = _pick(config, "activityHandling") or "START_OF_ACTIVITY_INTERRUPTS"
    if handling not in ("START_OF_ACTIVITY_INTERRUPTS", "NO_INTERRUPTION",
                        "ACTIVITY_HANDLING_UNSPECIFIED"):
        raise InvalidRequest(f"unknown activityHandling {handling!r}",
                             param="setup.realtimeInputConfig.activityHandling")
    return Vad(threshold=START_THRESHOLD.get(str(_pick(detection, "startOfSpeechSensitivity")),
                                             0.5),
               silence_s=(int(silence_ms) / 1000 if silence_ms is not None else
                          END_SILENCE_S.get(str(_pick(detection, "endOfSpeechSensitivity")),
                                            DEFAULT_SILENCE_S)),
               prefix_s=int(prefix_ms) / 1000 if prefix_ms is not None else 0.3,
               interrupt_response=handling != "NO_INTERRUPTION")
