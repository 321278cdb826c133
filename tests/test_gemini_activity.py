"""Gemini Live's automatic activity detection, as Gemini does it by default: the end of the
user's speech ends the turn, with no ``audioStreamEnd`` or ``activityEnd`` from the client;
``automaticActivityDetection.disabled`` leaves the turns to the client."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
import websockets

from agent.errors import InvalidRequest
from agent.protocols.gemini.speech import DEFAULT_SILENCE_S, activity_detection
from agent.transcripts import Vad
from agent.uvicorn_server import Address
from tests.media import flite_wav, read_wav
from tests.test_wire_schema import GEMINI_PATH, gemini_problems


def test_the_settings_as_server_vad() -> None:
    assert activity_detection({}) == Vad(silence_s=DEFAULT_SILENCE_S)
    config = {"realtimeInputConfig": {
        "automaticActivityDetection": {"startOfSpeechSensitivity": "START_SENSITIVITY_HIGH",
                                       "endOfSpeechSensitivity": "END_SENSITIVITY_LOW",
                                       "prefixPaddingMs": 100},
        "activityHandling": "NO_INTERRUPTION"}}
    assert activity_detection(config) == Vad(threshold=0.3, silence_s=1.2, prefix_s=0.1,
                                             interrupt_response=False)
    assert activity_detection({"realtime_input_config": {"automatic_activity_detection": {
        "silence_duration_ms": 300}}}) == Vad(silence_s=0.3)
    assert activity_detection({"realtimeInputConfig": {
        "automaticActivityDetection": {"disabled": True}}}) is None
    with pytest.raises(InvalidRequest, match="activityHandling"):
        activity_detection({"realtimeInputConfig": {"activityHandling": "WHENEVER"}})


def speech(tmp_path: Path) -> str:
    """A spoken question and a second of silence after it, as 16 kHz PCM16 in base64."""
    audio, rate = read_wav(flite_wav(tmp_path / "q.wav", "hello world"))
    audio = np.concatenate([soxr.resample(audio, rate, 16000), np.zeros(16000, np.float32)])
    return base64.b64encode((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()).decode()


async def turn(ws: Any, limit_s: float) -> list[dict[str, Any]]:
    """Messages up to the turn's end (``turnComplete``), within ``limit_s``."""
    got = []
    while not got or "turnComplete" not in got[-1].get("serverContent", {}):
        got.append(json.loads(await asyncio.wait_for(ws.recv(), limit_s)))
    return got


async def test_the_end_of_speech_ends_the_turn(embedded: Address, tmp_path: Path) -> None:
    async with websockets.connect(f"{embedded.ws}{GEMINI_PATH}") as ws:
        await ws.send(json.dumps({"setup": {"model": "models/default"}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        await ws.send(json.dumps({"realtimeInput": {"audio": {
            "mimeType": "audio/pcm;rate=16000", "data": speech(tmp_path)}}}))
        got = await turn(ws, 60)  # no audioStreamEnd: the server heard the speech end
    assert any("modelTurn" in m.get("serverContent", {}) for m in got)
    # the words were not asked for (no inputAudioTranscription): not sent
    assert not any("inputTranscription" in m.get("serverContent", {}) for m in got)
    assert gemini_problems([json.dumps(m) for m in got]) == []


async def test_disabled_the_client_ends_its_turns(embedded: Address, tmp_path: Path) -> None:
    setup = {"model": "models/default",
             "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}}}
    async with websockets.connect(f"{embedded.ws}{GEMINI_PATH}") as ws:
        await ws.send(json.dumps({"setup": setup}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        await ws.send(json.dumps({"realtimeInput": {"activityStart": {}}}))
        await ws.send(json.dumps({"realtimeInput": {"audio": {
            "mimeType": "audio/pcm;rate=16000", "data": speech(tmp_path)}}}))
        with pytest.raises(TimeoutError):  # a pause is no end of turn here
            await turn(ws, 3)
        await ws.send(json.dumps({"realtimeInput": {"activityEnd": {}}}))
        got = await turn(ws, 60)
    assert any("modelTurn" in m.get("serverContent", {}) for m in got)
