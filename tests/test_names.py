"""One namespace on every protocol: a profile answers through its handlers, a model name talks
to that model, an unknown name is the protocol's own not-found error listing the valid names.
Through the official SDKs (openai realtime and chat here, google-genai in test_gemini.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets

from agent.testing import data_url, fake_runtime, jpeg_bytes
from agent.uvicorn_server import Address, running
from tests.helpers import sdk_answer
from tests.media import flite_wav

PICTURE = jpeg_bytes("SAFFRON 42", size=(640, 240))
QUESTION = "What does it say?"


async def realtime_answer(address: Address, model: str, image: bytes, question: str) -> str:
    deltas, _ = await sdk_answer(address, model, image, question)
    return "".join(deltas)


async def chat_answer(address: Address, model: str, image: bytes, question: str) -> str:
    async with openai.AsyncOpenAI(base_url=f"{address.http}/v1", api_key="any") as client:
        reply = await client.chat.completions.create(model=model, messages=[
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(image)}},
                {"type": "text", "text": question}]}])
    return reply.choices[0].message.content or ""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "ocr"])
async def test_a_name_answers_the_same_on_realtime_and_chat(embedded: Address,
                                                            name: str) -> None:
    realtime = await realtime_answer(embedded, name, PICTURE, QUESTION)
    chat = await chat_answer(embedded, name, PICTURE, QUESTION)
    assert "SAFFRON 42" in realtime
    assert chat == realtime


@pytest.mark.slow
async def test_a_profile_answers_with_every_handler_a_model_with_itself(
        embedded: Address) -> None:
    profile = await chat_answer(embedded, "default", PICTURE, QUESTION)
    model = await chat_answer(embedded, "ocr", PICTURE, QUESTION)
    assert "Text in view: SAFFRON 42" in profile and "face in view" in profile
    assert "SAFFRON 42" in model and "face" not in model and "Text in view" not in model


@pytest.mark.slow
async def test_a_profile_hears_chat_audio_as_a_session_would(embedded: Address,
                                                             tmp_path: Path) -> None:
    """The request's audio reaches the profile's speech handler through voice activity, as
    a realtime session's committed audio does."""
    wav = base64.b64encode(flite_wav(tmp_path / "s.wav", "open the door please")
                           .read_bytes()).decode()
    async with openai.AsyncOpenAI(base_url=f"{embedded.http}/v1", api_key="any") as client:
        reply = await client.chat.completions.create(model="default", messages=[
            {"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
                {"type": "text", "text": "What was said?"}]}])
    text = reply.choices[0].message.content or ""
    assert text.startswith('Last heard: "') and "door" in text


@pytest.mark.slow
def test_models_lists_profiles_and_models(embedded: Address) -> None:
    with openai.OpenAI(base_url=f"{embedded.http}/v1", api_key="any") as client:
        check_models(client)


def check_models(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert listed["default"].owned_by == "streamagent-profile"
    assert listed["ocr"].owned_by == "streamagent-model"
    extra: dict[str, Any] = listed["default"].model_extra or {}
    assert extra["streamagent"]["kind"] == "profile"
    assert {"text", "image", "audio"} <= set(extra["streamagent"]["input_modalities"])
    assert "text_in_view" in extra["streamagent"]["handlers"]
    ocr: dict[str, Any] = listed["ocr"].model_extra or {}
    assert ocr["streamagent"]["input_modalities"] == ["text", "image"]
    assert client.models.retrieve("default").id == "default"
    assert client.models.retrieve("ocr").owned_by == "streamagent-model"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-9")
    assert "default" in str(info.value) and "ocr" in str(info.value)


async def test_unknown_name_is_not_found_listing_valid_names() -> None:
    async with running(fake_runtime()) as address:
        async with openai.AsyncOpenAI(base_url=f"{address.http}/v1", api_key="any") as client:
            with pytest.raises(openai.NotFoundError) as info:
                await client.chat.completions.create(
                    model="gpt-9", messages=[{"role": "user", "content": "hi"}])
        body: Any = info.value.body
        assert body["code"] == "model_not_found" and body["param"] == "model"
        assert "profiles: default" in body["message"] and "models: fake" in body["message"]
        async with openai.AsyncOpenAI(api_key="any",
                                      websocket_base_url=f"{address.ws}/v1") as rt, \
                rt.realtime.connect(model="gpt-9") as conn:
            event = await conn.recv()
            assert event.type == "error"
            assert event.error.code == "model_not_found"
            assert "profiles: default" in event.error.message


async def test_a_model_name_opens_a_session_on_that_model() -> None:
    runtime = fake_runtime()
    async with running(runtime) as address:
        text = await realtime_answer(address, "fake", jpeg_bytes("x"), "hello?")
        chat = await chat_answer(address, "fake", jpeg_bytes("x"), "hello?")
    assert text == chat == "tok0 tok1 tok2 tok3 tok4 "
    engine: Any = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
    realtime_req, chat_req = engine.requests[-2:]
    assert realtime_req.prompt == chat_req.prompt == "hello?"
    assert [i.shape for i in realtime_req.images] == [i.shape for i in chat_req.images]


async def test_item_added_echoes_every_part_images_included() -> None:
    async with running(fake_runtime()) as address:
        async with websockets.connect(f"{address.ws}/v1/realtime?model=default") as ws:
            url = data_url(jpeg_bytes("x"))
            content = [{"type": "input_image", "image_url": url},
                       {"type": "input_text", "text": "and this?"}]
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": content}}))
            while (event := json.loads(await ws.recv()))["type"] != "conversation.item.added":
                pass
    assert event["item"]["content"] == content


async def test_with_echo_media_off_items_come_back_without_their_data() -> None:
    """``streamagent.echo_media: false``: the echoes (GA and beta) carry the parts, not the
    picture or the sound; the model still sees the picture."""
    audio = base64.b64encode(bytes(3200)).decode()
    content = [{"type": "input_image", "image_url": data_url(jpeg_bytes("x"))},
               {"type": "input_audio", "audio": audio},
               {"type": "input_text", "text": "and this?"}]
    runtime = fake_runtime()
    async with running(runtime) as address:
        for headers, kinds in (({}, ("conversation.item.added", "conversation.item.done")),
                               ({"OpenAI-Beta": "realtime=v1"}, ("conversation.item.created",))):
            async with websockets.connect(f"{address.ws}/v1/realtime?model=fake",
                                          additional_headers=headers) as ws:
                await ws.send(json.dumps({"type": "session.update", "session": {
                    "streamagent": {"echo_media": False}}}))
                while (event := json.loads(await ws.recv()))["type"] != "session.updated":
                    pass
                assert event["session"]["streamagent"]["echo_media"] is False
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user", "content": content}}))
                await ws.send(json.dumps({"type": "response.create"}))
                echoes = []
                while (event := json.loads(await ws.recv()))["type"] != "response.done":
                    if event["type"] in kinds:
                        echoes.append(event["item"]["content"])
                assert echoes == [[{"type": "input_image"}, {"type": "input_audio"},
                                   content[2]]] * len(kinds)
    engine: Any = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
    assert [len(r.images) for r in engine.requests] == [1, 1]


async def test_models_endpoint_without_sdk() -> None:
    async with running(fake_runtime()) as address:
        async with httpx.AsyncClient(base_url=address.http) as http:
            r = await http.get("/v1/models/default")
            assert r.status_code == 200 and r.json()["owned_by"] == "streamagent-profile"
            r = await http.get("/v1/models/nope")
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
