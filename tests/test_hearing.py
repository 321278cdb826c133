"""What the user said, on the embedded default (silero-vad and pocketsphinx): a committed turn
and a voice-detected one become user items with their transcripts, in the events and shapes
the openai SDK knows, and the transcript is what the next answer answers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
import websockets

from agent.config import Config
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakePlugin, ServerThread
from agent.uvicorn_server import Address
from tests.helpers import Client
from tests.media import flite_wav, read_wav
from tests.test_wire_schema import GEMINI_PATH, check, gemini_problems

pytestmark = pytest.mark.slow
RATE = 24000


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    """The embedded default, with a fake model whose answers take 20 s (``echo`` asks it)."""
    pm = get_plugin_manager()
    pm.register(FakePlugin(tokens=400, delay_s=0.05))
    return Runtime.build(Config(), pm)


@pytest.fixture(scope="module")
def served(runtime: Runtime) -> Iterator[Address]:
    with ServerThread(runtime) as address:
        yield address


def speech(tmp_path: Path, text: str, silence_s: float = 1.0) -> str:
    """``text`` spoken by flite, then silence, as base64 PCM16 at 24 kHz."""
    audio, rate = read_wav(flite_wav(tmp_path / "said.wav", text))
    audio = np.concatenate([soxr.resample(audio, rate, RATE), np.zeros(int(silence_s * RATE))])
    return base64.b64encode((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()).decode()


async def configure(client: Client, audio_input: dict[str, Any]) -> dict[str, Any]:
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "streamagent": {"handlers": []}, "audio": {"input": audio_input}}})
    return (await client.until("session.updated"))[-1]["session"]


async def test_a_committed_turn_is_a_user_item_with_its_transcript(
        served: Address, tmp_path: Path) -> None:
    client = await Client.connect(f"{served.ws}/v1/realtime?model=default")
    session = await configure(client, {"transcription": {"model": "gpt-4o-mini-transcribe"}})
    assert session["audio"]["input"]["transcription"] == {"model": "asr"}
    await client.send({"type": "input_audio_buffer.append",
                       "audio": speech(tmp_path, "hello world")})
    await client.send({"type": "input_audio_buffer.commit"})
    got = await client.until("conversation.item.input_audio_transcription.completed",
                             timeout=60)
    committed = next(e for e in got if e["type"] == "input_audio_buffer.committed")
    item_id = committed["item_id"]
    added = next(e for e in got if e["type"] == "conversation.item.added")
    assert added["item"]["id"] == item_id and added["item"]["role"] == "user"
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    done = got[-1]
    assert done["item_id"] == item_id and "hello" in done["transcript"].lower()
    deltas = [e["delta"] for e in got
              if e["type"] == "conversation.item.input_audio_transcription.delta"]
    assert "".join(deltas).strip() == done["transcript"]
    assert 0.5 < done["usage"]["seconds"] < 5
    check(client.seen, beta=False)
    await client.close()


async def test_server_vad_finds_the_turn_and_answers_it(served: Address, tmp_path: Path) -> None:
    """With server VAD, speech then silence is a turn: the buffer's speech events, the item,
    its transcript, then a response, with no commit and no response.create from the client;
    the answer is to what was said (it joins the conversation as the user's words)."""
    client = await Client.connect(f"{served.ws}/v1/realtime?model=default")
    session = await configure(client, {"turn_detection": {
        "type": "server_vad", "silence_duration_ms": 400}})
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 400
    await client.send({"type": "input_audio_buffer.append",
                       "audio": speech(tmp_path, "open the door please", silence_s=1.5)})
    got = await client.until("response.done", timeout=60)
    kinds = [e["type"] for e in got]
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.added",
             "conversation.item.input_audio_transcription.completed", "response.created",
             "response.done"]
    assert [k for k in kinds if k in order] == order, kinds
    started = got[kinds.index("input_audio_buffer.speech_started")]
    stopped = got[kinds.index("input_audio_buffer.speech_stopped")]
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"] <= 4000
    transcript = got[kinds.index("conversation.item.input_audio_transcription.completed")]
    assert "door" in transcript["transcript"].lower()
    check(client.seen, beta=False, spoken=True)  # turn detection on, no modalities: spoken
    await client.close()


async def test_turn_fields_work_or_are_refused_by_name(served: Address) -> None:
    client = await Client.connect(f"{served.ws}/v1/realtime?model=default")
    cases = [({"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}},
              "idle_timeout_ms"),
             ({"turn_detection": {"type": "server_vad", "vad_mode": "fast"}}, "vad_mode"),
             ({"turn_detection": {"type": "push_to_talk"}}, "type"),
             ({"transcription": {"model": "my-whisper"}}, "my-whisper")]
    for audio_input, named in cases:
        await client.send({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": audio_input}}})
        error = (await client.until("error"))[-1]["error"]
        assert named in error["message"] or named in (error["param"] or ""), error
    session = await configure(client, {"turn_detection": {"type": "semantic_vad",
                                                          "eagerness": "high"}})
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "high", "create_response": True,
        "interrupt_response": True}
    session = await configure(client, {"turn_detection": None, "transcription": None})
    assert session["audio"]["input"] == {"format": {"type": "audio/pcm", "rate": RATE},
                                         "transcription": None, "turn_detection": None}
    await client.close()


async def test_the_beta_dialect_hears_too(served: Address, tmp_path: Path) -> None:
    client = await Client.connect(f"{served.ws}/v1/realtime?model=default",
                                  additional_headers={"OpenAI-Beta": "realtime=v1"})
    await client.send({"type": "session.update", "session": {
        "input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1"},
        "turn_detection": None, "streamagent": {"handlers": []}}})
    session = (await client.until("session.updated"))[-1]["session"]
    assert session["input_audio_transcription"] == {"model": "asr"}
    await client.send({"type": "input_audio_buffer.append",
                       "audio": speech(tmp_path, "hello world")})
    await client.send({"type": "input_audio_buffer.commit"})
    done = (await client.until("conversation.item.input_audio_transcription.completed",
                               timeout=60))[-1]
    assert "hello" in done["transcript"].lower()
    check(client.seen, beta=True)
    await client.close()


async def test_gemini_live_input_transcription(served: Address, tmp_path: Path) -> None:
    """``inputAudioTranscription``: the user's words as ``inputTranscription`` pieces, then
    the turn's answer; every message fits google-genai's own types."""
    audio, rate = read_wav(flite_wav(tmp_path / "said.wav", "hello world"))
    pcm = (np.clip(soxr.resample(audio, rate, 16000), -1, 1) * 32767).astype("<i2").tobytes()
    got: list[str] = []
    async with websockets.connect(f"{served.ws}{GEMINI_PATH}") as ws:
        await ws.send(json.dumps({"setup": {"model": "models/default",
                                            "inputAudioTranscription": {}}}))
        got.append(str(await ws.recv()))
        await ws.send(json.dumps({"realtimeInput": {"audio": {
            "mimeType": "audio/pcm;rate=16000", "data": base64.b64encode(pcm).decode()}}}))
        await ws.send(json.dumps({"realtimeInput": {"audioStreamEnd": True}}))
        while "turnComplete" not in got[-1]:
            got.append(str(await asyncio.wait_for(ws.recv(), 60)))
    heard = [json.loads(m)["serverContent"]["inputTranscription"] for m in got
             if "inputTranscription" in m]
    assert "hello" in "".join(h["text"] for h in heard).lower() and heard[-1]["finished"]
    assert gemini_problems(got) == []


def said_alone(tmp_path: Path, text: str) -> str:
    """``text`` spoken by flite with no silence after it: an utterance that has not ended."""
    audio, rate = read_wav(flite_wav(tmp_path / "alone.wav", text))
    audio = np.trim_zeros(soxr.resample(audio, rate, RATE), "b")
    return base64.b64encode((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()).decode()


async def test_speech_starting_interrupts_the_answer_at_once(
        served: Address, tmp_path: Path) -> None:
    """Server VAD with ``interrupt_response``: the answer under way (20 s long) stops when the
    user starts to speak (``turn_detected``), before the utterance has ended or been
    transcribed; the end of speech then commits it and asks again."""
    client = await Client.connect(f"{served.ws}/v1/realtime?model=default")
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "streamagent": {"handlers": ["echo"]},
        "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}})
    await client.until("session.updated")
    await client.send({"type": "response.create", "response": {
        "output_modalities": ["text"]}})
    first = (await client.until("response.output_text.delta"))[-1]["response_id"]
    await client.send({"type": "input_audio_buffer.append",
                       "audio": said_alone(tmp_path, "open the door please")})
    got = await client.until("response.done", timeout=30)
    kinds = [e["type"] for e in got]
    assert "input_audio_buffer.speech_started" in kinds, kinds
    assert "input_audio_buffer.speech_stopped" not in kinds  # still speaking
    done = got[-1]["response"]
    assert done["id"] == first and done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "turn_detected"
    started = next(e for e in got if e["type"] == "input_audio_buffer.speech_started")
    await client.send({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(bytes(2 * RATE)).decode()})  # 1 s quiet
    got = await client.until("response.created", timeout=60)
    stopped = next(e for e in got if e["type"] == "input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started["item_id"]
    heard = next(e for e in got if e["type"]
                 == "conversation.item.input_audio_transcription.completed")
    assert heard["item_id"] == started["item_id"] and "door" in heard["transcript"]
    check(client.seen, beta=False)
    await client.close()


async def test_the_speech_handler_and_the_transcriber_decode_an_utterance_once(
        runtime: Runtime, served: Address, tmp_path: Path) -> None:
    """A live session with the speech handler and server VAD transcription, both at their
    default settings: they cut the same utterance, and the recognizer decodes it once for
    both (the speech handler's live response and the user's transcript say the same). The
    session answers in speech (turn detection, no modalities), but the speech handler's live
    response, the user's own words, comes as text: it is not said back."""
    # a recent decode of the same audio serves any session: words no other test here says
    engine = runtime.pool.engines["asr"]
    decodes = engine.decodes  # type: ignore[attr-defined]
    client = await Client.connect(f"{served.ws}/v1/realtime?model=default")
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "streamagent": {"handlers": ["speech"], "live": True},
        "audio": {"input": {"transcription": {"model": "asr"},
                            "turn_detection": {"type": "server_vad",
                                               "create_response": False}}}}})
    await client.until("session.updated")
    await client.send({"type": "input_audio_buffer.append",
                       "audio": speech(tmp_path, "please shut the door", silence_s=1.5)})
    kinds = {"conversation.item.input_audio_transcription.completed", "response.done"}
    while not kinds <= {e["type"] for e in client.seen}:
        await client.recv(timeout=60)
    transcript = next(e["transcript"] for e in client.seen if e["type"]
                      == "conversation.item.input_audio_transcription.completed")
    live = next(e["response"] for e in client.seen if e["type"] == "response.done")
    said = live["output"][0]["content"][0]["text"]
    await client.close()
    assert "door" in transcript and said == transcript
    assert engine.decodes == decodes + 1  # type: ignore[attr-defined]


async def test_a_turn_ends_when_its_silence_is_heard_not_when_its_window_closes(
        served: Address, tmp_path: Path) -> None:
    """Hearing does not wait for the sampler: with 20 s windows, a turn said and followed by
    silence is told ended, and transcribed, long before its window closes."""
    client = await Client.connect(f"{served.ws}/v1/realtime?model=default")
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["text"],
        "streamagent": {"handlers": [], "sample_fps": 0.05},
        "audio": {"input": {"turn_detection": {"type": "server_vad",
                                               "create_response": False}}}}})
    await client.until("session.updated")
    await client.send({"type": "input_audio_buffer.append",
                       "audio": speech(tmp_path, "open the door please", silence_s=1.0)})
    got = await client.until("conversation.item.input_audio_transcription.completed",
                             timeout=8)
    assert "input_audio_buffer.speech_stopped" in [e["type"] for e in got]
    assert "door" in got[-1]["transcript"]
    await client.close()
