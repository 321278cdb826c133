"""Speech out: the flite voice, ``speak`` streaming sentence by sentence, and spoken responses
on the realtime (GA and beta) and Gemini Live wires, heard back by the project's own ASR."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np
import pytest
import websockets

from agent import AudioChunk, Part, TextDelta, ToolCallDelta, Usage
from agent.config import Config, ServerConfig
from agent.errors import ConfigError, EngineError, InvalidRequest
from agent.media import AUDIO_RATE
from agent.plugins import collect, get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakePlugin, data_url, fake_runtime, image_event, jpeg_bytes
from agent.uvicorn_server import Address, running
from agent.voice import OUTPUT_RATE, Sentences, Speech, pick_voice, render, resample, speak
from plugins import flite
from plugins.speech import _decode
from tests.conftest import need
from tests.helpers import Client

SAID = "The quick brown fox jumps over the lazy dog."
GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


def heard(pcm16: bytes, rate: int) -> list[str]:
    """What the project's ASR (the speech handler's pocketsphinx model) hears in ``pcm16``."""
    return [w.lower() for w in _decode(resample(pcm16, rate, AUDIO_RATE))]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def rms(pcm16: bytes) -> float:
    return float(np.sqrt(np.mean(np.frombuffer(pcm16, "<i2").astype(np.float64) ** 2)))


def voice() -> flite.FliteVoice:
    need("flite")
    return flite.VOICES[0]


def test_flite_says_a_sentence_that_the_projects_asr_hears_back() -> None:
    said = voice().synthesize(SAID)
    assert said.rate == 16000 and said.transcript == SAID
    assert 2.0 < len(said.pcm16) / 2 / said.rate < 4.0 and rms(said.pcm16) > 500
    got = heard(said.pcm16, said.rate)
    assert len(set(got) & set(words(SAID))) >= 6, got  # measured: 9 words of 9


@pytest.mark.parametrize(("program", "words"), [("false", "voice 'x' (flite) failed"),
                                                 ("no-such-flite", "no-such-flite is not inst")])
def test_a_failing_or_missing_flite_is_an_engine_error(program: str, words: str) -> None:
    with pytest.raises(EngineError, match=re.escape(words)):
        flite.FliteVoice("x", "kal16", program=program).synthesize(SAID)


def test_voices_are_registered_by_plugins_and_named_by_sessions() -> None:
    voices = collect(get_plugin_manager([flite])).voices
    assert {"flite", "flite-slt"} <= set(voices)
    assert pick_voice(voices, "flite-slt", None) is voices["flite-slt"]
    assert pick_voice(voices, None, None) is voices["flite"]  # the first by name
    assert pick_voice(voices, "alloy", "flite-rms") is voices["flite-rms"]
    assert pick_voice(voices, "Puck", None) is voices["flite"]
    with pytest.raises(InvalidRequest, match="unknown voice 'nope'; voices: flite, "):
        pick_voice(voices, "nope", None)
    with pytest.raises(InvalidRequest, match="no voice is installed"):
        pick_voice({}, None, None)


def test_an_unknown_server_voice_fails_at_start_up() -> None:
    config = Config(server=ServerConfig(voice="flite-nope"))
    with pytest.raises(ConfigError, match="server.voice is 'flite-nope'; voices: .*'flite-slt'"):
        Runtime.build(config, get_plugin_manager([FakePlugin(), flite]))
    runtime = Runtime.build(config.model_copy(update={"server": ServerConfig(
        voice="flite-slt")}), get_plugin_manager([FakePlugin(), flite]))
    assert runtime.voice("alloy").name == runtime.voice(None).name == "flite-slt"


@pytest.mark.parametrize(("pieces", "expected"), [
    (["Hello there. How", " are you?"], ["Hello there. ", "How are you?"]),
    (["It costs 3.", "5 euros. Fine"], ["It costs 3.5 euros. "]),  # 3. may go on as 3.5
    (["I have 3. ", "Good"], ["I have 3. "]),
    (["One!", "\nTwo\nthree"], ["One!", "\nTwo\n"]),
    (["... ", "Well. "], ["... Well. "]),  # no word yet: it waits for one
])
def test_sentences_end_at_their_marks_and_keep_every_character(
        pieces: list[str], expected: list[str]) -> None:
    cut = Sentences()
    got = [s for p in pieces for s in cut.feed(p)]
    assert got == expected
    assert "".join(got + cut.end()) == "".join(pieces)


def test_a_long_sentence_is_cut_at_a_comma_or_a_space() -> None:
    cut = Sentences(cap=40)
    text = "word " * 4 + "then a comma, and more words without an end in sight at all"
    got = cut.feed(text)
    assert got[0].endswith(", ") and all(len(s) <= 40 for s in got)
    assert "".join(got + cut.end()) == text


async def slow_answer(ended: list[float]) -> AsyncIterator[Part]:
    """A model that writes a sentence, then thinks for a second before the next."""
    try:
        yield TextDelta("Hello")
        yield TextDelta(" there. ")
        await asyncio.sleep(1.0)
        yield TextDelta("The quick brown fox")
        yield Usage(completion_tokens=4)
    finally:
        ended.append(time.perf_counter())


async def test_speech_starts_with_the_first_sentence_not_after_the_answer() -> None:
    ended: list[float] = []
    speech = Speech(voice(), on=True)
    got: list[tuple[float, Part]] = []
    start = time.perf_counter()
    async for part in speak(slow_answer(ended), speech):
        got.append((time.perf_counter() - start, part))
    kinds = [type(p).__name__ for _, p in got]
    first_audio = kinds.index("AudioChunk")
    assert kinds[:first_audio] == ["TextDelta", "TextDelta"]
    at, chunk = got[first_audio]
    assert isinstance(chunk, AudioChunk) and chunk.transcript == "Hello there. "
    assert chunk.rate == OUTPUT_RATE and rms(chunk.pcm16) > 300
    # spoken while the model still thinks (its stream ends a second later); how soon is a
    # benchmark figure (benchmarks/voice.py: first audio after the first sentence)
    assert at < ended[0] - start
    spoken = [p.transcript for _, p in got if isinstance(p, AudioChunk)]
    assert "".join(spoken) == "Hello there. The quick brown fox"
    assert kinds.index("Usage") < len(kinds) - 1  # the rest is said once the text is complete
    assert all(len(p.pcm16) <= OUTPUT_RATE for _, p in got if isinstance(p, AudioChunk))


async def test_speak_passes_other_parts_on_and_does_not_talk_over_a_model_that_speaks(
        ) -> None:
    async def omni() -> AsyncIterator[str | Part]:
        yield "Hi. "
        yield ToolCallDelta(0, "call_1", "look", "{}")
        yield AudioChunk(b"\x10\x00" * 1600, 16000, "Hi. ")  # 0.1 s of its own speech
        yield "And more. "

    got = [p async for p in speak(omni(), Speech(voice(), on=True))]
    chunks = [p for p in got if isinstance(p, AudioChunk)]
    assert [c.transcript for c in chunks if c.transcript] == ["Hi. ", "Hi. "]  # ours, its own
    assert len(chunks[-1].pcm16) == 2 * 2400 and chunks[-1].rate == OUTPUT_RATE
    assert [p for p in got if not isinstance(p, AudioChunk)] == [
        TextDelta("Hi. "), ToolCallDelta(0, "call_1", "look", "{}"), TextDelta("And more. ")]


async def test_closing_speak_stops_at_once_and_closes_the_models_stream() -> None:
    ended: list[float] = []
    stream = speak(slow_answer(ended), Speech(voice(), on=True))
    async for part in stream:
        if isinstance(part, AudioChunk):
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert ended  # the model's stream was closed with it, not left to the loop's finalizer


async def spoken_events(client: Client) -> list[dict[str, Any]]:
    await client.send({"type": "response.create"})
    return await client.until("response.done", timeout=30)


def assert_spoken(events: list[dict[str, Any]], audio: str, transcript: str) -> None:
    """One spoken response's events in order: its item and audio part open; audio deltas,
    each sentence's words after its first audio; then everything closes."""
    kinds = [e["type"] for e in events]
    start = kinds.index("response.created")
    kinds = kinds[start:]
    assert kinds[:3] == ["response.created", "response.output_item.added",
                         "response.content_part.added"], kinds
    assert kinds[-5:] == [f"{audio}.done", f"{transcript}.done", "response.content_part.done",
                          "response.output_item.done", "response.done"], kinds
    middle = kinds[3:-5]
    assert middle[0] == f"{audio}.delta" and f"{transcript}.delta" in middle, middle
    assert set(middle) == {f"{audio}.delta", f"{transcript}.delta"}, middle
    assert all(kinds[i - 1] == f"{audio}.delta" for i, k in enumerate(kinds)
               if k == f"{transcript}.delta")


def audio_of(events: list[dict[str, Any]], kind: str) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == kind)


@pytest.mark.slow
async def test_a_realtime_session_on_the_embedded_default_speaks_its_answer(
        embedded: Address) -> None:
    client = await Client.connect(f"{embedded.ws}/v1/realtime?model=default")
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["audio"],
        "audio": {"output": {"voice": "marin", "format": {"type": "audio/pcm", "rate": 24000}}}}})
    session = (await client.until("session.updated"))[-1]["session"]
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000},
                                          "voice": "flite", "speed": 1.0}
    await client.send(image_event(data_url(jpeg_bytes("OPEN", size=(400, 200))),
                                  text="What is written?"))
    got = await spoken_events(client)
    await client.close()
    events = got[[e["type"] for e in got].index("response.created"):]
    assert_spoken(events, "response.output_audio", "response.output_audio_transcript")
    assert events[2]["part"] == {"type": "audio", "transcript": ""}
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["output_modalities"] == ["audio"]
    transcript = done["output"][0]["content"][0]["transcript"]
    assert done["output"][0]["content"][0]["type"] == "output_audio" and "OPEN" in transcript
    deltas = [e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"]
    assert "".join(deltas) == transcript
    pcm = audio_of(events, "response.output_audio.delta")
    assert len(pcm) / 2 / OUTPUT_RATE > 1.0 and rms(pcm) > 300
    said = set(heard(pcm, OUTPUT_RATE))
    assert len(said & set(words(transcript))) >= 3, (said, transcript)  # measured: 4 of 6


@pytest.fixture
async def spoken() -> AsyncIterator[Address]:
    async with running(fake_runtime(tokens=8, delay_s=0.01, plugins=(flite,))) as address:
        yield address


@pytest.mark.parametrize("encoding", ["audio/pcmu", "audio/pcma"])
async def test_g711_output_is_8_khz_speech(spoken: Address, encoding: str) -> None:
    need("flite")
    client = await Client.connect(f"{spoken.ws}/v1/realtime?model=default")
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["audio"],
        "audio": {"output": {"format": {"type": encoding}}}}})
    output = (await client.until("session.updated"))[-1]["session"]["audio"]["output"]
    assert output["format"] == {"type": encoding}
    g711 = audio_of(await spoken_events(client), "response.output_audio.delta")
    await client.close()
    decoder = av.CodecContext.create("pcm_mulaw" if encoding.endswith("u") else "pcm_alaw", "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"
    frames = decoder.decode(av.Packet(g711))
    pcm = b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)
    assert len(pcm) == 2 * len(g711) and len(g711) / 8000 > 2.0  # one byte a sample
    said = np.frombuffer(render("".join(f"tok{i} " for i in range(8)),
                                Speech(voice(), rate=8000)), "<i2")
    assert len(said) == len(g711) and np.corrcoef(said, np.frombuffer(pcm, "<i2"))[0, 1] > 0.99


async def test_bad_output_settings_are_refused_by_name(spoken: Address) -> None:
    client = await Client.connect(f"{spoken.ws}/v1/realtime?model=default")
    for output, param in [({"format": {"type": "audio/pcm", "rate": 16000}},
                           "session.audio.output.format.rate"),
                          ({"format": {"type": "audio/opus"}}, "session.audio.output.format.type"),
                          ({"voice": "nope"}, "session.audio.output.voice"),
                          ({"speed": 3.0}, "session.audio.output.speed")]:
        await client.send({"type": "session.update", "session": {
            "type": "realtime", "audio": {"output": output}}})
        error = await client.error()
        assert error["param"] == param, error
    await client.send({"type": "session.update", "session": {"output_modalities": ["video"]}})
    assert (await client.error())["param"] == "session.output_modalities.0"
    await client.close()


async def test_without_a_voice_audio_is_refused_and_text_goes_on() -> None:
    async with running(fake_runtime(tokens=3)) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        await client.send({"type": "session.update", "session": {"output_modalities": ["audio"]}})
        assert "no voice is installed" in (await client.error())["message"]
        await client.send({"type": "response.create",
                           "response": {"output_modalities": ["audio"]}})
        assert (await client.error())["param"] == "response.output_modalities"
        await client.send({"type": "response.create"})
        assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"
        await client.close()


async def test_a_response_asked_in_text_is_not_spoken_in_an_audio_session(
        spoken: Address) -> None:
    need("flite")
    client = await Client.connect(f"{spoken.ws}/v1/realtime?model=default")
    await client.send({"type": "session.update", "session": {"output_modalities": ["audio"]}})
    await client.until("session.updated")
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    got = await client.until("response.done")
    await client.close()
    assert "response.output_text.delta" in {e["type"] for e in got}
    assert not any("audio" in e["type"] for e in got)


async def test_the_beta_dialect_speaks_with_beta_names(spoken: Address) -> None:
    need("flite")
    client = await Client.connect(f"{spoken.ws}/v1/realtime?model=default",
                                  additional_headers={"OpenAI-Beta": "realtime=v1"})
    await client.send({"type": "session.update", "session": {
        "modalities": ["text", "audio"], "voice": "alloy", "output_audio_format": "pcm16"}})
    session = (await client.until("session.updated"))[-1]["session"]
    assert session["modalities"] == ["text", "audio"] and session["voice"] == "flite"
    assert session["output_audio_format"] == "pcm16"
    got = await spoken_events(client)
    await client.close()
    assert_spoken(got, "response.audio", "response.audio_transcript")
    done = got[-1]["response"]
    assert done["modalities"] == ["text", "audio"]
    assert done["output"][0]["content"][0]["type"] == "audio"
    assert rms(audio_of(got, "response.audio.delta")) > 300


async def test_cancel_stops_speech_at_once() -> None:
    need("flite")
    runtime = fake_runtime(tokens=400, delay_s=0.005, plugins=(flite,))
    async with running(runtime) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        await client.send({"type": "session.update", "session": {"output_modalities": ["audio"]}})
        await client.until("session.updated")
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        await client.send({"type": "response.cancel"})
        got = await client.until("response.done")
        assert got[-1]["response"]["status"] == "cancelled"
        assert not any(e["type"] == "response.output_audio.delta"
                       for e in await drain(client, 0.5))
        fake = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
        stopped_at = fake.generated
        await asyncio.sleep(0.3)
        assert fake.generated == stopped_at < 400
        said = got[-1]["response"]["output"][0]["content"][0]["transcript"]
        deltas = [e["delta"] for e in client.seen
                  if e["type"] == "response.output_audio_transcript.delta"]
        assert said == "".join(deltas) and len(said) < 400 * 6  # only what was said
        await client.close()


async def drain(client: Client, seconds: float) -> list[dict[str, Any]]:
    """Whatever arrives within ``seconds``."""
    got: list[dict[str, Any]] = []
    try:
        while True:
            got.append(await client.recv(seconds))
    except TimeoutError:
        return got


async def test_live_responses_speak_too() -> None:
    need("flite")
    async with running(fake_runtime(live=True, plugins=(flite,))) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        await client.send({"type": "session.update", "session": {"output_modalities": ["audio"]}})
        await client.until("session.updated")
        for i in range(3):
            await client.send(image_event(data_url(jpeg_bytes(str(i))), timestamp=i + 0.01))
        got = await client.until("response.done", timeout=30)
        await client.close()
    done = got[-1]["response"]
    assert done["output_modalities"] == ["audio"] and done["metadata"]["handler"] == "echo"
    assert done["output"][0]["content"][0]["transcript"].startswith("window 0")
    assert rms(audio_of(got, "response.output_audio.delta")) > 300


async def test_gemini_audio_is_inline_pcm_with_its_transcription(spoken: Address) -> None:
    need("flite")
    async with websockets.connect(f"{spoken.ws}{GEMINI_PATH}", max_size=None) as ws:
        await ws.send(json.dumps({"setup": {
            "model": "models/default", "outputAudioTranscription": {},
            "generationConfig": {"responseModalities": ["AUDIO"], "speechConfig": {
                "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}}}}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        await ws.send(json.dumps({"clientContent": {"turns": [
            {"role": "user", "parts": [{"text": "talk"}]}], "turnComplete": True}}))
        messages = []
        while "turnComplete" not in (m := json.loads(await asyncio.wait_for(ws.recv(), 30))).get(
                "serverContent", {}):
            messages.append(m["serverContent"])
    parts = [p for m in messages for p in m.get("modelTurn", {}).get("parts", [])]
    assert parts and all(set(p) == {"inlineData"} for p in parts)  # audio only, no text
    assert {p["inlineData"]["mimeType"] for p in parts} == {"audio/pcm;rate=24000"}
    pcm = b"".join(base64.b64decode(p["inlineData"]["data"]) for p in parts)
    assert rms(pcm) > 300
    said = "".join(m["outputTranscription"]["text"] for m in messages
                   if "outputTranscription" in m)
    assert said == "".join(f"tok{i} " for i in range(8))
    assert "outputTranscription" not in messages[0]  # the audio comes first


async def test_gemini_refuses_a_modality_it_cannot_serve(spoken: Address) -> None:
    async with websockets.connect(f"{spoken.ws}{GEMINI_PATH}") as ws:
        await ws.send(json.dumps({"setup": {"generationConfig": {
            "responseModalities": ["IMAGE"]}}}))
        await ws.recv()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    assert "IMAGE" in closed.value.rcvd.reason
