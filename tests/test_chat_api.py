"""OpenAI-compatible chat completions: the official SDK against a tiny checkpoint and the
embedded OCR model, plus every documented error over the fake engine."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from agent.config import Config, GenerationConfig, ModelConfig
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakeEngine, ServerThread, data_url, fake_runtime, jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import Address, running
from tests.media import flite_wav, word_video


def wav_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def omni(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Address]:
    source = build("qwen2.5-omni", tmp_path_factory.mktemp("omni"))
    config = Config(models={"tiny": ModelConfig(
        engine="transformers", family="qwen2.5-omni", source=str(source),
        generation=GenerationConfig(max_new_tokens=6, min_new_tokens=6))})
    with ServerThread(Runtime.build(config, get_plugin_manager())) as address:
        yield address


@pytest.mark.slow
def test_sdk_plain_and_streamed_with_image_video_and_audio(omni: Address,
                                                           tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=f"{omni.http}/v1", api_key="any")
    assert "tiny" in [m.id for m in client.models.list()]
    video = word_video(tmp_path / "v.mp4", ["A", "B"])
    audio = flite_wav(tmp_path / "a.wav", "hello world")
    content: list[Any] = [
        {"type": "text", "text": "What happens?"},
        {"type": "image_url", "image_url": {"url": data_url(jpeg_bytes("hi"))}},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," +
                                            base64.b64encode(video.read_bytes()).decode()}},
        {"type": "input_audio", "input_audio": {"data": wav_b64(audio), "format": "wav"}},
    ]
    plain = client.chat.completions.create(model="tiny", messages=[
        {"role": "user", "content": content}], max_tokens=6, seed=1, temperature=0)
    assert plain.choices[0].message.role == "assistant"
    assert isinstance(plain.choices[0].message.content, str)
    usage = plain.usage
    assert usage is not None and usage.prompt_tokens > 100  # the image, video and audio
    assert 1 <= usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert plain.choices[0].finish_reason == ("length" if usage.completion_tokens == 6
                                              else "stop")
    chunks = list(client.chat.completions.create(
        model="tiny", stream=True, max_tokens=2, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": content}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"  # 2 tokens, then the limit
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 1


@pytest.mark.slow
def test_sdk_reads_text_through_the_embedded_ocr_model(embedded: Address) -> None:
    client = openai.OpenAI(base_url=f"{embedded.http}/v1", api_key="any")
    reply = client.chat.completions.create(model="ocr", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(jpeg_bytes("CHAT OCR",
                                                                        size=(480, 200)))}}]}])
    assert "CHAT OCR" in (reply.choices[0].message.content or "")


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[Address, Runtime]]:
    runtime = fake_runtime(tokens=6)
    async with running(runtime) as address:
        yield address, runtime


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": "hi"}], **fields}


async def test_stop_strings_multi_turn_and_several_images(fake: Any) -> None:
    address, runtime = fake
    async with httpx.AsyncClient(base_url=address.http) as http:
        r = await http.post("/v1/chat/completions", json=chat(stop=["tok2"]))
        assert r.json()["choices"][0]["message"]["content"] == "tok0 tok1 "
        img = {"type": "image_url", "image_url": {"url": data_url(jpeg_bytes("a"))}}
        bare = {"type": "image_url",
                "image_url": base64.b64encode(jpeg_bytes("b", size=(64, 48))).decode()}
        r = await http.post("/v1/chat/completions", json={"model": "fake", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [img, {"type": "text", "text": "first?"}]},
            {"role": "assistant", "content": "An a."},
            {"role": "user", "content": [bare, {"type": "text", "text": "and now?"}]}],
            "temperature": 0.5, "top_p": 0.9, "max_tokens": 3})
        assert r.status_code == 200, r.text
    engine = runtime.pool.engines["fake"]
    assert isinstance(engine, FakeEngine)
    req = engine.requests[-1]
    assert req.prompt == "and now?" and req.instructions == "Be brief."
    assert [(t.role, t.text) for t in req.history] == [("user", "first?"), ("assistant", "An a.")]
    assert [i.shape for i in req.images] == [(240, 320, 3), (48, 64, 3)]
    assert req.options["temperature"] == 0.5 and req.options["max_new_tokens"] == 3


@pytest.mark.parametrize("model", ["fake", "default"])
async def test_usage_and_finish_reason_come_from_the_engine(fake: Any, model: str) -> None:
    """A model name, and a profile (whose handler makes the model call: the request's token
    limit caps it, and its usage is the answer's)."""
    address, _ = fake
    async with openai.AsyncOpenAI(base_url=f"{address.http}/v1", api_key="any") as client:
        ask: Any = {"model": model, "messages": [{"role": "user", "content": "two words"}]}
        whole = await client.chat.completions.create(**ask)
        assert whole.choices[0].finish_reason == "stop"
        assert whole.usage is not None
        # the tiny checkpoints' tokenizer makes 4 tokens of "two words"
        assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (4, 6)
        cut = await client.chat.completions.create(**ask, max_tokens=3)
        assert cut.choices[0].finish_reason == "length"
        assert cut.choices[0].message.content == "tok0 tok1 tok2 "
        assert cut.usage is not None and cut.usage.completion_tokens == 3
        stopped = await client.chat.completions.create(**ask, max_tokens=5, stop=["tok1"])
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].message.content == "tok0 "
        if model == "fake":  # the engine stopped and counted the stop's token; a profile's
            # handler gets no stop (the answer is cut here, the model's stream closed early)
            assert stopped.usage is not None and stopped.usage.completion_tokens == 2
        chunks = [c async for c in await client.chat.completions.create(
            **ask, max_tokens=4, stream=True, stream_options={"include_usage": True})]
        assert chunks[-2].choices[0].finish_reason == "length"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 4 + 4


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": "fake", "messages": [{"role": "user", "content": [{"type": "hologram"}]}]},
     400, None),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": data_url(b"not a picture")}}]}]), 400, "invalid_media"),
    (chat(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(b"RIFFjunk").decode(), "format": "wav"}}]}]), 400,
     "invalid_media"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "/etc/hostname"}}]}]), 400, "invalid_media"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "https://example.invalid/cat.jpg"}}]}]), 400, "invalid_media"),
    (chat(messages=[{"role": "system", "content": "no user"}]), 400, "invalid_request"),
    (chat(model="gpt-9"), 404, "model_not_found"),
])
async def test_bad_requests_get_openai_errors(fake: Any, body: dict[str, Any], status: int,
                                              code: str | None) -> None:
    address, _ = fake
    async with httpx.AsyncClient(base_url=address.http) as http:
        r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    if code:
        assert err["code"] == code


async def test_too_large_busy_and_unauthorized() -> None:
    runtime = fake_runtime(tokens=400, delay_s=0.01)
    server = runtime.config.server
    server.max_message_bytes, server.max_concurrent_requests, server.api_key = 4096, 1, "k"
    async with running(runtime) as address:
        auth = {"Authorization": "Bearer k"}
        async with httpx.AsyncClient(base_url=address.http, headers=auth) as http:
            r = await http.post("/v1/chat/completions", content=b"x" * 5000)
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
            r = await http.post("/v1/chat/completions", json=chat(), headers={
                "Authorization": "Bearer nope"})
            assert r.status_code == 401
            async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as s:
                await s.aiter_lines().__anext__()  # the first chunk: generation is under way
                r = await http.post("/v1/chat/completions", json=chat())
                assert r.status_code == 503 and r.json()["error"]["code"] == "server_overloaded"
            for _ in range(100):  # the server notices the closed stream, then frees the slot
                r = await http.post("/v1/chat/completions", json=chat(max_tokens=2))
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 200


async def test_local_files_only_from_allowed_directories(tmp_path: Path) -> None:
    allowed = tmp_path / "media"
    allowed.mkdir()
    (allowed / "a.jpg").write_bytes(jpeg_bytes("ok"))
    runtime = fake_runtime()
    runtime.config.server.media_dirs = [str(allowed)]
    runtime = Runtime(runtime.config, runtime.registry, runtime.pool)
    async with running(runtime) as address:
        async with httpx.AsyncClient(base_url=address.http) as http:
            def part(url: str) -> dict[str, Any]:
                return chat(messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}]}])
            assert (await http.post("/v1/chat/completions",
                                    json=part(str(allowed / "a.jpg")))).status_code == 200
            (tmp_path / "outside.jpg").write_bytes(jpeg_bytes("no"))  # exists, readable
            for escape in (str(allowed / ".." / "outside.jpg"), str(tmp_path / "outside.jpg")):
                r = await http.post("/v1/chat/completions", json=part(escape))
                assert r.status_code == 400
                assert "server.media_dirs" in r.json()["error"]["message"]




async def test_audio_url_from_data_url_and_allowed_file(tmp_path: Path) -> None:
    allowed = tmp_path / "media"
    allowed.mkdir()
    speech = flite_wav(allowed / "s.wav", "good morning")
    runtime = fake_runtime()
    runtime.config.server.media_dirs = [str(allowed)]
    sources = [str(speech), f"file://{speech}",
               "data:audio/wav;base64," + wav_b64(speech)]
    async with running(runtime) as address, httpx.AsyncClient(base_url=address.http) as http:
        for url in sources:
            r = await http.post("/v1/chat/completions", json=chat(messages=[
                {"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": url}},
                                             {"type": "text", "text": "what is said?"}]}]))
            assert r.status_code == 200, r.text
        r = await http.post("/v1/chat/completions", json=chat(messages=[
            {"role": "user", "content": [{"type": "audio_url", "audio_url": {
                "url": str(tmp_path / "elsewhere.wav")}}]}]))
        assert r.status_code == 400 and "server.media_dirs" in r.json()["error"]["message"]
    engine = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
    assert isinstance(engine, FakeEngine)
    heard = [req.audio for req in engine.requests[-3:]]
    seconds = [a.size / 16000 for a in heard if a is not None]
    assert len(seconds) == 3 and min(seconds) > 0.5 and max(seconds) - min(seconds) < 0.01
