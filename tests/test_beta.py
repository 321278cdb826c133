"""The OpenAI Realtime beta dialect: the openai SDK's ``beta.realtime`` client, unchanged, gets
beta event names and shapes only; a GA client on the same server is unaffected."""

from __future__ import annotations

import base64
import json
import typing
from typing import Any

import openai
import pytest
import websockets
from openai.types.beta.realtime import realtime_server_event

from agent.protocols.realtime import beta
from agent.testing import FakeEngine, data_url, fake_runtime, jpeg_bytes
from agent.uvicorn_server import running


def beta_types() -> set[str]:
    union = realtime_server_event.RealtimeServerEvent
    members = typing.get_args(typing.get_args(union)[0])
    return {t for m in members for t in typing.get_args(m.model_fields["type"].annotation)}


async def test_beta_sdk_client_unchanged() -> None:
    runtime = fake_runtime()
    async with running(runtime) as address, openai.AsyncOpenAI(
            api_key="any", websocket_base_url=f"{address.ws}/v1") as client, \
            client.beta.realtime.connect(model="default") as conn:
        await conn.session.update(session={"modalities": ["text"], "instructions": "Be brief.",
                                           "input_audio_format": "pcm16"})
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "hello there"}]})
        await conn.input_audio_buffer.append(audio=base64.b64encode(b"\0\0" * 2400).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        got: list[Any] = []
        async for event in conn:
            got.append(event)
            if event.type == "response.done":
                break
    types = [e.type for e in got]
    assert set(types) <= beta_types(), set(types) - beta_types()
    assert types[:2] == ["session.created", "session.updated"]
    updated = got[1].session
    assert updated.instructions == "Be brief." and updated.modalities == ["text"]
    assert updated.input_audio_format == "pcm16"
    assert "conversation.item.created" in types and "input_audio_buffer.committed" in types
    deltas = [e.delta for e in got if e.type == "response.text.delta"]
    assert deltas == [f"tok{i} " for i in range(5)]
    done_text = next(e for e in got if e.type == "response.text.done").text
    assert done_text == "".join(deltas)
    part = next(e for e in got if e.type == "response.content_part.done").part
    assert part.type == "text" and part.text == done_text
    response = got[-1].response
    assert response.status == "completed" and response.modalities == ["text"]
    assert response.output[0].content[0].type == "text"
    engine = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
    assert isinstance(engine, FakeEngine) and engine.requests[-1].prompt == "hello there"


async def test_ga_clients_on_the_same_server_keep_ga_names() -> None:
    async with running(fake_runtime()) as address, \
            websockets.connect(f"{address.ws}/v1/realtime") as ws:
        await ws.send(json.dumps({"type": "response.create"}))
        seen = []
        while (event := json.loads(await ws.recv()))["type"] != "response.done":
            seen.append(event["type"])
    assert "response.output_text.delta" in seen and "response.text.delta" not in seen


async def test_beta_by_subprotocol_with_images_and_bad_formats() -> None:
    async with running(fake_runtime()) as address, websockets.connect(
            f"{address.ws}/v1/realtime", subprotocols=[
                websockets.Subprotocol("realtime"),
                websockets.Subprotocol(beta.SUBPROTOCOL)]) as ws:
        assert json.loads(await ws.recv())["session"]["input_audio_format"] == "pcm16"
        await ws.send(json.dumps({"type": "session.update",
                                  "session": {"input_audio_format": "g711_ulaw"}}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and "g711_ulaw" in error["error"]["message"]
        content = [{"type": "input_image", "image_url": data_url(jpeg_bytes("x"))},
                   {"type": "text", "text": "beta text part"}]
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": content}}))
        created = json.loads(await ws.recv())
        assert created["type"] == "conversation.item.created"
        assert [p["type"] for p in created["item"]["content"]] == ["input_image", "input_text"]
        await ws.send("not json")
        assert json.loads(await ws.recv())["type"] == "error"


@pytest.mark.parametrize(("headers", "expected"), [
    ({"openai-beta": "realtime=v1"}, True),
    ({"openai-beta": "assistants=v2, realtime=v1"}, True),
    ({"sec-websocket-protocol": "realtime, openai-beta.realtime-v1"}, True),
    ({"sec-websocket-protocol": "realtime"}, False),
    ({}, False),
])
def test_requested(headers: dict[str, str], expected: bool) -> None:
    assert beta.requested(headers) is expected
