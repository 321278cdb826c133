"""Neural voices from Piper voice files (plugins/piper.py), on a tiny voice file in Piper's
format built offline (agent/tiny/piper.py): the real piper-tts phonemizes with espeak-ng and
runs the file with onnxruntime, as it runs a real voice."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from agent.config import Config, ProfileConfig, VoiceConfig
from agent.errors import ConfigError
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakePlugin
from agent.tiny.piper import HOP, RATE, build_piper
from agent.uvicorn_server import running
from agent.voice import OUTPUT_RATE
from plugins import piper
from tests.helpers import Client

SAID = "Hello world. How are you today?"


@pytest.fixture(scope="module")
def voice_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_piper(tmp_path_factory.mktemp("piper"))


def runtime(voices: dict[str, VoiceConfig], **server: object) -> Runtime:
    config = Config.model_validate({
        "server": server, "voices": voices,
        "profiles": {"default": ProfileConfig(handlers=["echo"])}})
    return Runtime.build(config, get_plugin_manager([FakePlugin(tokens=6), piper]))


def test_a_voice_file_speaks_each_phoneme_at_the_voices_rate(voice_file: Path) -> None:
    """The voice's rate, 16-bit samples, ``hop_length`` of them a phoneme id (each phoneme
    is padded by Piper's pad id, and each sentence begins and ends with one), and ``speed``
    shortens it as the length scale does."""
    made = runtime({"amy": VoiceConfig(engine="piper", model=str(voice_file))})
    voice = made.voice("amy")
    said = voice.synthesize(SAID)
    assert said.rate == RATE and said.transcript == SAID
    ids = sum(len(voice.voice.phonemes_to_ids(p))  # type: ignore[attr-defined]
              for p in voice.voice.phonemize(SAID))  # type: ignore[attr-defined]
    assert len(said.pcm16) == 2 * HOP * ids
    assert len(voice.synthesize(SAID, speed=2.0).pcm16) == HOP * ids
    assert voice.synthesize("  ").pcm16 == b""


def test_a_voice_file_is_checked_at_start_up(voice_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="voices.amy.model: no voice file at"):
        runtime({"amy": VoiceConfig(engine="piper", model=str(tmp_path / "none.onnx"))})
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(voice_file.read_bytes())
    with pytest.raises(ConfigError, match="lonely.onnx.json, the voice's config, is missing"):
        runtime({"amy": VoiceConfig(engine="piper", model=str(lonely))})
    with pytest.raises(ConfigError, match="voices.amy.engine is 'coqui'; voice engines: "
                                          r"\['model', 'piper'\]"):
        runtime({"amy": VoiceConfig(engine="coqui", model=str(voice_file))})
    with pytest.raises(ConfigError, match="voices.amy.options: unknown option 'speed'"):
        runtime({"amy": VoiceConfig(engine="piper", model=str(voice_file),
                                    options={"speed": 2})})


async def test_a_realtime_session_speaks_with_the_voice_file(voice_file: Path) -> None:
    """The server's default voice from the file: an answer comes as 24 kHz audio deltas with
    its transcript, as long as the voice said it."""
    made = runtime({"amy": VoiceConfig(engine="piper", model=str(voice_file))}, voice="amy")
    async with running(made) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        await client.send({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"]}})
        session = (await client.until("session.updated"))[-1]["session"]
        assert session["audio"]["output"]["voice"] == "amy"
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Say something."}]}})
        await client.send({"type": "response.create"})
        events = await client.until("response.done", timeout=30)
        await client.close()
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events
                   if e["type"] == "response.output_audio.delta")
    done = events[-1]["response"]
    assert done["status"] == "completed"
    transcript = done["output"][0]["content"][0]["transcript"]
    assert transcript
    spoken = made.voice("amy").synthesize(transcript)
    seconds = len(spoken.pcm16) / 2 / spoken.rate
    assert abs(len(pcm) / 2 / OUTPUT_RATE - seconds) < 0.05 * seconds + 0.05
