"""Speech for the realtime clients that default to audio, in the shapes they send and read
(scripts/check_clients_audio.py runs the clients themselves). Pipecat's OpenAI Realtime
service asks for audio only in its own ``response.create`` and turns on turn detection without
``output_modalities``: the responses that server VAD creates for it must be spoken too."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from agent.testing import data_url, fake_runtime, image_event, jpeg_bytes
from agent.uvicorn_server import Address, running
from agent.voice import OUTPUT_RATE
from plugins import flite
from tests.conftest import need
from tests.helpers import Client
from tests.media import flite_wav, read_wav
from tests.test_voice import heard, words
from tests.test_wire_schema import check

PIPECAT_SESSION = {  # what Pipecat 1.14 sends with its example's session properties
    "type": "realtime", "model": "default", "instructions": "You are a helpful assistant.",
    "audio": {"input": {"transcription": {"model": "whisper-1"},
                        "noise_reduction": {"type": "near_field"},
                        "turn_detection": {"type": "semantic_vad"}}}}
AUDIO_EVENT_FIELDS = {"type", "event_id", "response_id", "item_id", "output_index",
                      "content_index", "delta"}


@pytest.fixture
async def voiced() -> AsyncIterator[Address]:
    async with running(fake_runtime(tokens=6, delay_s=0.01, plugins=(flite,))) as address:
        yield address


async def update(client: Client, session: dict[str, Any]) -> dict[str, Any]:
    await client.send({"type": "session.update", "session": session})
    return (await client.until("session.updated"))[-1]["session"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("turns", [{"type": "semantic_vad"}, False, None])
async def test_turn_detection_without_output_modalities_speaks(
        voiced: Address, turns: dict[str, Any] | bool | None) -> None:
    """Server VAD, or Pipecat's own turn detection (``false``, as ``null``: the client
    commits, then sends a bare ``response.create``): spoken either way."""
    need("flite")
    client = await Client.connect(f"{voiced.ws}/v1/realtime?model=default")
    session = await update(client, {**PIPECAT_SESSION, "audio": {"input": {
        **PIPECAT_SESSION["audio"]["input"], "turn_detection": turns}}})  # type: ignore[index]
    assert session["output_modalities"] == ["audio"]
    await update(client, {"type": "realtime", "tools": []})  # Pipecat's second update
    await client.send({"type": "response.create"})  # as server VAD creates one: no modalities
    got = await client.until("response.done", timeout=30)
    await client.close()
    assert got[-1]["response"]["output_modalities"] == ["audio"]
    deltas = [e for e in got if e["type"] == "response.output_audio.delta"]
    assert deltas and all(set(e) == AUDIO_EVENT_FIELDS for e in deltas)
    assert "response.output_text.delta" not in {e["type"] for e in got}
    check(client.seen, beta=False, spoken=True)


@pytest.mark.parametrize("chosen", [["text"], ["audio"]])
async def test_modalities_a_client_chose_stay_as_chosen(voiced: Address,
                                                        chosen: list[str]) -> None:
    client = await Client.connect(f"{voiced.ws}/v1/realtime?model=default")
    await update(client, {"type": "realtime", "output_modalities": chosen})
    session = await update(client, PIPECAT_SESSION)
    await client.close()
    assert session["output_modalities"] == chosen


async def test_without_a_voice_turn_detection_answers_in_text() -> None:
    async with running(fake_runtime(tokens=3)) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        assert (await update(client, PIPECAT_SESSION))["output_modalities"] == ["text"]
        await client.send({"type": "response.create"})
        got = await client.until("response.done")
        await client.close()
    assert "response.output_text.delta" in {e["type"] for e in got}


@pytest.mark.slow
async def test_a_spoken_turn_is_answered_in_speech_that_the_asr_hears_back(
        embedded: Address, tmp_path: Path) -> None:
    """Pipecat's voice agent on the embedded default: a camera frame, then the user speaks;
    semantic VAD ends the turn and the answer comes back as 24 kHz speech of its own words."""
    need("flite")
    client = await Client.connect(f"{embedded.ws}/v1/realtime?model=default")
    await update(client, PIPECAT_SESSION)
    event = image_event(data_url(jpeg_bytes("HELLO", size=(400, 200))))
    event["item"]["id"] = "5dc5b7ffcd0249438f99f90aed36b8f7"  # Pipecat names its items
    await client.send(event)
    added = (await client.until("conversation.item.added"))[-1]
    assert added["item"]["id"] == event["item"]["id"]
    audio, rate = read_wav(flite_wav(tmp_path / "q.wav", "What is written?"))
    audio = np.concatenate([np.zeros(OUTPUT_RATE // 2), soxr.resample(audio, rate, OUTPUT_RATE),
                            np.zeros(2 * OUTPUT_RATE)])
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    for i in range(0, len(pcm), 9600):  # 200 ms appends
        await client.send({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(pcm[i:i + 9600]).decode()})
    got = await client.until("response.done", timeout=90)
    await client.close()
    kinds = [e["type"] for e in got]
    assert "input_audio_buffer.speech_stopped" in kinds
    assert "response.output_text.delta" not in kinds
    said = b"".join(base64.b64decode(e["delta"]) for e in got
                    if e["type"] == "response.output_audio.delta")
    transcript = got[-1]["response"]["output"][0]["content"][0]["transcript"]
    assert "HELLO" in transcript
    back = set(heard(said, OUTPUT_RATE))
    assert "hello" in back and len(back & set(words(transcript))) >= 3, (back, transcript)
    check(client.seen, beta=False, spoken=True)
