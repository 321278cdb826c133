"""What the user said on the realtime wire: transcription, turn detection, heard speech."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent.errors import StreamAgentError
from agent.protocols.realtime import events, wire
from agent.transcripts import DEFAULT_TRANSCRIBER, Heard, Listener, Transcriber, Vad

OPENAI_TRANSCRIBERS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
                       "gpt-4o-transcribe-diarize", "gpt-realtime", "gpt-realtime-whisper")
"""OpenAI's transcription models, which the clients' defaults name: the embedded ``asr``
transcribes for them."""
EAGERNESS_S = {"low": 8.0, "medium": 4.0, "auto": 4.0, "high": 2.0}
"""``semantic_vad``'s eagerness as the longest pause that the end-of-turn model may hear as
unfinished (OpenAI's "max timeouts" of 8, 4 and 2 s); a pause it hears as finished ends the
turn after ``agent.turns.PAUSE_S``."""


def hearing(audio: wire.AudioInput | None) -> dict[str, Any]:
    """``audio.input.transcription`` and ``turn_detection`` as settings (left out: kept)."""
    out: dict[str, Any] = {}
    if audio is None:
        return out
    if "transcription" in audio.model_fields_set:
        model = audio.transcription.model if audio.transcription is not None else ""
        out["transcription"] = DEFAULT_TRANSCRIBER if model in OPENAI_TRANSCRIBERS or (
            audio.transcription is not None and not model) else model
    if "turn_detection" in audio.model_fields_set:
        td = audio.turn_detection
        if td is None:
            out["vad"] = None
        else:
            semantic = td.type == "semantic_vad"
            silence = (EAGERNESS_S[td.eagerness] if semantic
                       else (td.silence_duration_ms or 500) / 1000)
            out["vad"] = Vad(td.threshold, silence, td.prefix_padding_ms / 1000,
                             td.create_response, td.interrupt_response,
                             td.eagerness if semantic else None)
    return out


def input_object(transcriber: Transcriber | None) -> dict[str, Any]:
    """``audio.input``'s transcription and turn detection as the session has them."""
    if transcriber is None:
        return {"transcription": None, "turn_detection": None}
    vad = transcriber.vad
    turns: dict[str, Any] | None = None
    if vad is not None and vad.eagerness:
        turns = {"type": "semantic_vad", "eagerness": vad.eagerness}
    elif vad is not None:
        turns = {"type": "server_vad", "threshold": vad.threshold,
                 "prefix_padding_ms": round(vad.prefix_s * 1000),
                 "silence_duration_ms": round(vad.silence_s * 1000)}
    if turns is not None and vad is not None:
        turns.update(create_response=vad.create_response,
                     interrupt_response=vad.interrupt_response)
    return {"transcription": {"model": transcriber.model}, "turn_detection": turns}


class HeardEvents(Listener):
    """What the user said, as realtime events: with server VAD ``speech_started`` when speech
    begins, then at its end ``speech_stopped``, the commit and the user item; then its
    transcript."""

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self.send = send

    async def started(self, item_id: str, start: float) -> None:
        await self.send(events.event("input_audio_buffer.speech_started",
                                     audio_start_ms=round(start * 1000), item_id=item_id))

    async def speech(self, heard: Heard, vad: bool) -> None:
        if vad:
            await self.send(events.event("input_audio_buffer.speech_stopped",
                                         audio_end_ms=round(heard.end * 1000),
                                         item_id=heard.item_id))
            await self.send(events.event("input_audio_buffer.committed",
                                         item_id=heard.item_id, previous_item_id=None))
        item = {"id": heard.item_id, "object": "realtime.item", "type": "message",
                "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        await self.send(events.event("conversation.item.added", previous_item_id=None,
                                     item=item))
        await self.send(events.event("conversation.item.done", previous_item_id=None,
                                     item=item))

    async def delta(self, heard: Heard, text: str) -> None:
        await self.send(events.event("conversation.item.input_audio_transcription.delta",
                                     item_id=heard.item_id, content_index=0, delta=text))

    async def transcribed(self, heard: Heard, transcript: str) -> None:
        await self.send(events.event(
            "conversation.item.input_audio_transcription.completed", item_id=heard.item_id,
            content_index=0, transcript=transcript,
            usage={"type": "duration", "seconds": round(heard.end - heard.start, 3)}))

    async def failed(self, heard: Heard, error: StreamAgentError) -> None:
        await self.send(events.event(
            "conversation.item.input_audio_transcription.failed", item_id=heard.item_id,
            content_index=0, error={"type": error.type, "code": error.code,
                                    "message": error.message, "param": error.param}))

    async def error(self, error: StreamAgentError) -> None:
        await self.send(events.error(error))
