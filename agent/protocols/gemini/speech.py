"""Speech out on the Gemini Live wire: ``generationConfig.responseModalities: ["AUDIO"]`` and
its ``speechConfig`` as the conversation's speech, and each piece of speech as Gemini sends it
(``inlineData`` audio in ``modelTurn``, its words in ``outputTranscription``)."""

from __future__ import annotations

import base64
from typing import Any

from agent.errors import InvalidRequest
from agent.parts import AudioChunk
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
