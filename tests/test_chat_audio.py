"""Chat completions that speak (``modalities: ["text", "audio"]``), through the openai SDK: the
whole answer as WAV with its transcript, or streamed as PCM16 pieces with theirs."""

from __future__ import annotations

import base64
import io
import wave
from typing import Any

import openai
import pytest

from agent.testing import fake_runtime
from agent.uvicorn_server import running
from plugins import flite

SENTENCES = ["The door is open. ", "A man walks in. "]
QUESTION: Any = [{"role": "user", "content": "what happens?"}]


async def test_a_spoken_answer_as_wav_and_as_a_pcm16_stream() -> None:
    async with running(fake_runtime(tokens=2, say=SENTENCES, plugins=(flite,))) as address, \
            openai.AsyncOpenAI(base_url=f"{address.http}/v1", api_key="any") as client:
        reply = await client.chat.completions.create(
            model="fake", messages=QUESTION, modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"})
        audio = reply.choices[0].message.audio
        assert audio is not None and audio.transcript == "".join(SENTENCES).strip()
        with wave.open(io.BytesIO(base64.b64decode(audio.data))) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
            assert w.getnframes() / 24000 > 1.0  # two sentences said
        assert reply.choices[0].message.content is None
        pieces = []
        stream = await client.chat.completions.create(
            model="fake", messages=QUESTION, modalities=["text", "audio"], stream=True,
            audio={"voice": "alloy", "format": "pcm16"})
        async for chunk in stream:
            if chunk.choices and (said := chunk.choices[0].delta.model_dump().get("audio")):
                pieces.append(said)
        assert "".join(p["transcript"] for p in pieces).strip() == "".join(SENTENCES).strip()
        pcm = b"".join(base64.b64decode(p["data"]) for p in pieces)
        assert len(pcm) / 2 / 24000 > 1.0 and len({p["id"] for p in pieces}) == 1


@pytest.mark.parametrize(("audio", "stream", "param"), [
    (None, False, "audio"), ({"voice": "alloy", "format": "mp3"}, False, "audio.format"),
    ({"voice": "alloy", "format": "wav"}, True, "audio.format"),
    ({"voice": "nobody", "format": "wav"}, False, None)])
async def test_spoken_requests_that_cannot_be_served_are_400(
        audio: Any, stream: bool, param: str | None) -> None:
    async with running(fake_runtime(tokens=2, plugins=(flite,))) as address, \
            openai.AsyncOpenAI(base_url=f"{address.http}/v1", api_key="any") as client:
        extra: dict[str, Any] = {"audio": audio} if audio else {}
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="fake", messages=QUESTION,
                                                 modalities=["text", "audio"], stream=stream,
                                                 **extra)
    assert info.value.status_code == 400
    if param is not None:
        assert info.value.body["param"] == param  # type: ignore[index]
