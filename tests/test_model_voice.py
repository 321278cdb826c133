"""A model's own voice: Qwen2.5-Omni's talker and token2wav on the transformers engine
(plugins/hf/talker.py), on a tiny whole checkpoint built offline with its speakers. The wave
is the checkpoint's own: equal to what transformers' ``generate(return_audio=True)`` gives, in
a realtime session and in chat completions, as long as the talker was allowed to speak."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import Config, GenerationConfig, ModelConfig, VoiceConfig
from agent.engine import ModelRequest
from agent.errors import ConfigError, InvalidRequest
from agent.parts import AudioChunk, TextDelta
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import ServerThread
from agent.tiny import build
from agent.uvicorn_server import Address
from plugins.hf.talker import SYSTEM
from tests.helpers import Client

pytestmark = pytest.mark.slow
SPEECH_S = 0.4
"""The talker's bound: random weights never end, so every answer is this long (20 codes)."""
SAMPLES = int(24000 * SPEECH_S)
GENERATION = GenerationConfig(max_new_tokens=5, min_new_tokens=5, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Runtime, Address]]:
    source = build("qwen2.5-omni", tmp_path_factory.mktemp("omni"))
    config = Config(
        models={"omni": ModelConfig(engine="transformers", source=str(source),
                                    generation=GENERATION,
                                    options={"speech": True, "speech_max_s": SPEECH_S})},
        voices={"ethan": VoiceConfig(engine="model", model="omni",
                                     options={"speaker": "Ethan"})})
    runtime = Runtime.build(config, get_plugin_manager())
    with ServerThread(runtime) as address:
        yield source, runtime, address


def own_wave(source: Path, speaker: str, question: str) -> bytes:
    """transformers' own: the model card's way to have Qwen2.5-Omni speak, seed 0."""
    import numpy as np
    import torch
    from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniProcessor

    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(source)
    processor = Qwen2_5OmniProcessor.from_pretrained(source)
    chat = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": [{"type": "text", "text": question}]}]
    inputs = processor(text=[processor.apply_chat_template(chat, add_generation_prompt=True,
                                                           tokenize=False)],
                       return_tensors="pt")
    torch.manual_seed(0)
    talker = model.talker
    _, wav = model.generate(**inputs, speaker=speaker, return_audio=True,
                            thinker_max_new_tokens=5, thinker_min_new_tokens=5,
                            thinker_do_sample=False, talker_max_new_tokens=20,
                            talker_eos_token_id=[talker.codec_pad_token,
                                                 talker.codec_eos_token])
    return bytes((wav.reshape(-1).float().clamp(-1, 1).numpy() * 32767).astype(np.int16)
                 .tobytes())


async def parts_of(runtime: Runtime, request: ModelRequest) -> list[Any]:
    return [p async for p in runtime.pool.stream("omni", request)]


async def test_the_engine_speaks_the_checkpoints_own_wave(
        served: tuple[Path, Runtime, Address]) -> None:
    """The speaker's wave, at 24 kHz, before the text it says (its transcript), and the same
    samples transformers' own ``generate`` gives; another speaker, another wave."""
    source, runtime, _ = served
    parts = await parts_of(runtime, ModelRequest(prompt="Say hi", voice="Ethan",
                                                 options={"seed": 0}))
    audio = [p for p in parts if isinstance(p, AudioChunk)]
    text = "".join(p.text for p in parts if isinstance(p, TextDelta))
    assert parts.index(audio[-1]) < min(i for i, p in enumerate(parts)
                                        if isinstance(p, TextDelta))
    assert {a.rate for a in audio} == {24000} and audio[0].transcript == text
    pcm = b"".join(a.pcm16 for a in audio)
    assert len(pcm) == 2 * SAMPLES
    assert pcm == own_wave(source, "Ethan", "Say hi")
    chelsie = await parts_of(runtime, ModelRequest(prompt="Say hi", voice="Chelsie",
                                                   options={"seed": 0}))
    other = b"".join(p.pcm16 for p in chelsie if isinstance(p, AudioChunk))
    assert len(other) == len(pcm) and other != pcm
    with pytest.raises(InvalidRequest, match="no voice 'Nobody' of its own; its voices: "
                                             "Chelsie, Ethan"):
        await parts_of(runtime, ModelRequest(prompt="Say hi", voice="Nobody"))


async def test_a_realtime_session_hears_the_models_own_voice(
        served: tuple[Path, Runtime, Address]) -> None:
    _, _, address = served
    client = await Client.connect(f"{address.ws}/v1/realtime?model=omni")
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["audio"],
        "audio": {"output": {"voice": "ethan"}}}})
    session = (await client.until("session.updated"))[-1]["session"]
    assert session["audio"]["output"]["voice"] == "ethan"
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Say hi"}]}})
    await client.send({"type": "response.create"})
    events = await client.until("response.done", timeout=60)
    await client.close()
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events
                   if e["type"] == "response.output_audio.delta")
    words = [e["delta"] for e in events
             if e["type"] == "response.output_audio_transcript.delta"]
    done = events[-1]["response"]
    assert done["status"] == "incomplete", done  # 5 tokens, its max: the answer is cut
    assert len(pcm) == 2 * SAMPLES  # the talker's, not a voice saying the words
    assert len(words) == 1 and done["output"][0]["content"][0]["transcript"] == words[0]


def test_chat_completions_return_the_models_own_voice(
        served: tuple[Path, Runtime, Address]) -> None:
    _, _, address = served
    reply = httpx.post(f"{address.http}/v1/chat/completions", timeout=60, json={
        "model": "omni", "modalities": ["text", "audio"],
        "audio": {"voice": "ethan", "format": "wav"},
        "messages": [{"role": "user", "content": "Say hi"}]})
    assert reply.status_code == 200, reply.text
    message = reply.json()["choices"][0]["message"]
    with wave.open(io.BytesIO(base64.b64decode(message["audio"]["data"]))) as wav:
        assert (wav.getframerate(), wav.getnframes()) == (24000, SAMPLES)
    assert message["audio"]["transcript"]


def test_a_models_voice_is_checked_and_says_other_models_answers_in_the_default() -> None:
    def runtime(**options: Any) -> Runtime:
        return Runtime.build(Config(voices={"ethan": VoiceConfig(
            engine="model", model=options.pop("model", "ocr"), options=options)}),
            get_plugin_manager())

    voice = runtime(speaker="Ethan").voice("ethan")
    assert voice.fallback is not None and voice.fallback.name == "flite"  # type: ignore
    assert voice.synthesize("Hello there.").rate == 16000  # flite's kal16
    with pytest.raises(ConfigError, match="voices.ethan.options: a model's voice takes one "
                                          "option, speaker"):
        runtime()
    with pytest.raises(ConfigError, match="voices.ethan.model is 'nope': name a model"):
        runtime(speaker="Ethan", model="nope")
