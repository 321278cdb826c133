"""Every event we send fits the client libraries' own schemas: each server event of a whole
session, on each dialect, validated against the SDK's pydantic models (the GA and beta realtime
unions of the openai SDK, google-genai's ``LiveServerMessage``), strictly: a wrong literal, a
missing required field, a coerced type or a field the schema does not know fails the test."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import operator
import typing
from typing import Annotated, Any

import pydantic
import pytest
import websockets
from google.genai import types as genai_types
from openai.types.beta.realtime import realtime_server_event as beta_events
from openai.types.realtime import realtime_server_event as ga_events
from pydantic import Field, TypeAdapter

from agent.runtime import Runtime
from agent.testing import data_url, fake_runtime, image_event, jpeg_bytes
from agent.uvicorn_server import Address, running
from plugins import flite
from tests.helpers import Client

GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
BETA_HEADERS = {"OpenAI-Beta": "realtime=v1"}
SERVER_FIELDS = {"session.id", "session.object"}
"""What OpenAI's own server sends in a session that the SDK's request-shaped model lacks. Other
fields outside a schema must be our ``streamagent`` extension."""
BETA_TOLERATED = {
    ("session.model", None): "a closed list of OpenAI's model names; ours are this server's own",
    ("item.content.*.type", "input_image"): "beta has no image part: images are our extension, "
                                            "and an item echoes the client's own parts",
}
"""Beta literals we cannot meet, by error location (and value; None: any)."""


def discriminated(union: Any) -> TypeAdapter[Any]:
    """The SDK's union, discriminated on ``type`` as pydantic understands it (the SDK marks it
    with its own ``PropertyInfo``, which pydantic ignores): errors name the one event type."""
    members = typing.get_args(typing.get_args(union)[0])
    either = functools.reduce(operator.or_, members)
    return TypeAdapter(typing.cast(Any, Annotated[either, Field(discriminator="type")]))


GA = discriminated(ga_events.RealtimeServerEvent)
BETA = discriminated(beta_events.RealtimeServerEvent)


def unknown_fields(value: Any, path: str) -> list[str]:
    """Fields the schema does not declare (kept as ``model_extra``), anywhere inside."""
    if isinstance(value, pydantic.BaseModel):
        out = [f"{path}.{k}".lstrip(".") for k in value.model_extra or {}]
        for name in type(value).model_fields:
            out += unknown_fields(getattr(value, name), f"{path}.{name}")
        return out
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in unknown_fields(v, f"{path}[{i}]")]
    return []


def tolerated(error: Any, allowed: dict[tuple[str, Any], str]) -> bool:
    loc = ".".join("*" if isinstance(part, int) else str(part) for part in error["loc"][1:])
    return any(loc == where and value in (None, error["input"]) for where, value in allowed)


def problems(adapter: TypeAdapter[Any], events: list[dict[str, Any]],
             allowed: dict[tuple[str, Any], str] | None = None) -> list[str]:
    """What does not fit: validation errors (but ``allowed`` ones), and fields outside the
    schema (but ours)."""
    out = []
    for event in events:
        try:
            model = adapter.validate_json(json.dumps(event), strict=True)
        except pydantic.ValidationError as exc:
            out += [f"{event['type']}: {'.'.join(map(str, e['loc'][1:]))}: {e['msg']} "
                    f"(got {e['input']!r})" for e in exc.errors()
                    if not tolerated(e, allowed or {})]
            continue
        out += [f"{event['type']}: unknown field {f}" for f in unknown_fields(model, "")
                if f not in SERVER_FIELDS and f.rsplit(".", 1)[-1] != "streamagent"]
    return out


def check(events: list[dict[str, Any]], beta: bool, spoken: bool = False) -> None:
    """Every event fits; the message parts are text (``spoken``: audio, with a transcript)."""
    found = problems(BETA, events, BETA_TOLERATED) if beta else problems(GA, events)
    assert not found, "\n".join(found)
    parts = [e["part"]["type"] for e in events if e["type"].startswith("response.content_part")]
    assert set(parts) <= {"audio" if spoken else "text"}
    messages = [item for e in events if e["type"] == "response.done"
                for item in e["response"]["output"] if item["type"] == "message"]
    done = [p["type"] for item in messages for p in item["content"]]
    kind = ("audio" if beta else "output_audio") if spoken else ("text" if beta else "output_text")
    assert set(done) <= {kind} and bool(parts) == bool(messages)


def test_the_check_finds_wrong_literals_missing_fields_coerced_types_and_unknown_fields(
        ) -> None:
    part = {"type": "response.content_part.added", "event_id": "e", "response_id": "r",
            "item_id": "i", "output_index": "0", "content_index": 0,
            "part": {"type": "output_text", "text": "", "txt": ""}}
    done = {"type": "response.done", "response": {"status": "done"}}
    for adapter in (GA, BETA):
        found = problems(adapter, [part, done])
        assert len(found) == 4, found
        assert "output_index: Input should be a valid integer (got '0')" in found[0]
        assert "part.type: Input should be 'text' or 'audio' (got 'output_text')" in found[1]
        assert "event_id: Field required" in found[2] and "response.status" in found[3]
        assert problems(adapter, [{**part, "output_index": 0, "part": {"txt": ""}}]) == [
            "response.content_part.added: unknown field part.txt"]


def types_of(events: list[dict[str, Any]]) -> set[str]:
    return {e["type"] for e in events}


async def connect(address: Address, beta: bool) -> Client:
    return await Client.connect(f"{address.ws}/v1/realtime?model=default",
                                additional_headers=BETA_HEADERS if beta else {})


async def ask_and_cancel(client: Client, beta: bool) -> None:
    """Session, items, audio, a text answer, errors, a cancel and a capped answer."""
    text = "response.text.delta" if beta else "response.output_text.delta"
    session: dict[str, Any] = ({"instructions": "Be brief.", "modalities": ["text"],
                                "input_audio_format": "pcm16"} if beta else
                               {"type": "realtime", "instructions": "Be brief.",
                                "output_modalities": ["text"]})
    await client.send({"type": "session.update", "session": session})
    await client.until("session.updated")
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "text" if beta else "input_text", "text": "hello"}]}})
    await client.until("conversation.item.created" if beta else "conversation.item.done")
    await client.send(image_event(data_url(jpeg_bytes("hi")), text="what is this?"))
    await client.until("conversation.item.created" if beta else "conversation.item.done")
    pcm = base64.b64encode(b"\0\0" * 2400).decode()
    await client.send({"type": "input_audio_buffer.append", "audio": pcm})
    await client.send({"type": "input_audio_buffer.commit"})
    await client.until("input_audio_buffer.committed")
    await client.send({"type": "input_audio_buffer.clear"})
    await client.until("input_audio_buffer.cleared")
    await client.send({"type": "response.create",
                       "response": {"metadata": {"client_event_id": "ce_1"}}})
    assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"
    await client.send("{oops")
    await client.error()
    await client.send({"type": "response.explode"})
    await client.error()
    await client.send({"type": "response.create"})
    await client.until(text)
    await client.until(text)
    await client.send({"type": "response.cancel"})
    assert (await client.until("response.done"))[-1]["response"]["status"] == "cancelled"
    await client.send({"type": "response.cancel"})
    assert (await client.error())["code"] == "response_cancel_not_active"
    await client.send({"type": "response.create", "response": {"max_output_tokens": 3}})
    assert (await client.until("response.done"))[-1]["response"]["status"] == "incomplete"


async def live_then_fail(client: Client) -> None:
    """Live mode answering each window, then a question whose model call fails."""
    await client.send({"type": "session.update", "session": {"streamagent": {"sample_fps": 2}}})
    await client.until("session.updated")
    for i in range(6):
        await client.send(image_event(data_url(jpeg_bytes(str(i))), timestamp=i * 0.25 + 0.01))
    for _ in range(2):
        await client.until("response.done")
    await client.send({"type": "response.create"})
    while (await client.until("response.done"))[-1]["response"]["status"] != "failed":
        pass


async def session_events(runtime: Runtime, beta: bool, live: bool) -> list[dict[str, Any]]:
    async with running(runtime) as address:
        client = await connect(address, beta)
        await (live_then_fail(client) if live else ask_and_cancel(client, beta))
        await client.close()
    return client.seen


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
async def test_every_event_of_a_question_session_fits_the_sdk(beta: bool) -> None:
    seen = await session_events(fake_runtime(tokens=20, delay_s=0.01), beta, live=False)
    check(seen, beta)
    expected = {"session.created", "session.updated", "input_audio_buffer.committed",
                "input_audio_buffer.cleared", "error", "response.created",
                "response.output_item.added", "response.content_part.added",
                "response.content_part.done", "response.output_item.done", "response.done"}
    expected |= ({"conversation.item.created", "response.text.delta", "response.text.done"}
                 if beta else {"conversation.item.added", "conversation.item.done",
                               "response.output_text.delta", "response.output_text.done"})
    assert types_of(seen) == expected


async def spoken_session(address: Address, beta: bool) -> list[dict[str, Any]]:
    """Speech on (PCM, then G.711), a spoken answer, a cancelled one, a live one."""
    client = await connect(address, beta)
    audio = "response.audio.delta" if beta else "response.output_audio.delta"
    for fmt in ("pcm16", "g711_alaw") if beta else ("audio/pcm", "audio/pcma"):
        session: dict[str, Any] = (
            {"modalities": ["text", "audio"], "voice": "alloy", "speed": 1.2,
             "output_audio_format": fmt} if beta else
            {"type": "realtime", "output_modalities": ["audio"],
             "audio": {"output": {"voice": "flite-slt", "format": {"type": fmt}}}})
        await client.send({"type": "session.update", "session": session})
        await client.until("session.updated")
        await client.send({"type": "response.create", "response": {"max_output_tokens": 20}})
        assert (await client.until("response.done"))[-1]["response"]["status"] == "incomplete"
    await client.send({"type": "response.create"})  # 400 words: cancelled while it speaks
    await client.until(audio)
    await client.send({"type": "response.cancel"})
    assert (await client.until("response.done"))[-1]["response"]["status"] == "cancelled"
    await client.send({"type": "session.update", "session": {"streamagent": {"live": True}}})
    await client.send(image_event(data_url(jpeg_bytes("x")), timestamp=0.01))
    await client.send(image_event(data_url(jpeg_bytes("y")), timestamp=1.01))
    assert (await client.until("response.done"))[-1]["response"]["metadata"].get("window_end_ms")
    await client.close()
    return client.seen


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
async def test_every_event_of_a_spoken_session_fits_the_sdk(beta: bool) -> None:
    async with running(fake_runtime(tokens=400, delay_s=0.005, plugins=(flite,))) as address:
        seen = await spoken_session(address, beta)
    check(seen, beta, spoken=True)
    audio = ({"response.audio.delta", "response.audio.done", "response.audio_transcript.delta",
              "response.audio_transcript.done"} if beta else
             {"response.output_audio.delta", "response.output_audio.done",
              "response.output_audio_transcript.delta", "response.output_audio_transcript.done"})
    assert audio <= types_of(seen)
    assert not {t for t in types_of(seen) if "text" in t}


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
async def test_every_event_of_a_live_session_fits_the_sdk(beta: bool) -> None:
    seen = await session_events(fake_runtime(live=True, fail_after=0), beta, live=True)
    check(seen, beta)
    assert {"response.done", "error"} <= types_of(seen)


def standard_b64(value: Any) -> Any:
    """``value`` with every ``inlineData.data`` in standard base64: the SDK writes bytes back in
    the URL-safe alphabet, Google's server (and we) send the standard one."""
    if isinstance(value, list):
        return [standard_b64(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: standard_b64(v) for k, v in value.items()}
    if isinstance(out.get("inlineData"), dict):
        data = out["inlineData"]["data"]
        out["inlineData"] = {**out["inlineData"], "data": data.replace("-", "+").replace("_", "/")}
    return out


def gemini_problems(messages: list[str]) -> list[str]:
    """Validation errors, by camelCase name only (as on the wire), and anything that does not
    come back unchanged from the model (a field dropped or renamed)."""
    out = []
    for text in messages:
        try:
            msg = genai_types.LiveServerMessage.model_validate_json(
                text, strict=True, by_alias=True, by_name=False)
        except pydantic.ValidationError as exc:
            out += [f"{text[:60]}: {'.'.join(map(str, e['loc']))}: {e['msg']}"
                    for e in exc.errors()]
            continue
        back = standard_b64(msg.model_dump(mode="json", by_alias=True, exclude_none=True))
        if back != json.loads(text):
            out.append(f"{text[:60]}: comes back as {back}")
    return out


async def gemini_session(address: Address) -> tuple[list[str], websockets.frames.Close | None]:
    """A turn with a picture, a turn interrupted by new text, then a bad message."""
    got: list[str] = []
    ws = await websockets.connect(f"{address.ws}{GEMINI_PATH}", max_size=None)

    async def until(key: str) -> None:
        while key not in json.loads(text := await asyncio.wait_for(ws.recv(), 15)).get(
                "serverContent", {key: 1} if key == "setupComplete" else {}):
            got.append(str(text))
        got.append(str(text))

    await ws.send(json.dumps({"setup": {"model": "models/default",
                                        "generationConfig": {"responseModalities": ["TEXT"]}}}))
    got.append(str(await ws.recv()))
    frame = base64.b64encode(jpeg_bytes("x")).decode()
    await ws.send(json.dumps({"realtimeInput": {"video": {"mimeType": "image/jpeg",
                                                          "data": frame}}}))
    await ws.send(json.dumps({"clientContent": {"turns": [
        {"role": "user", "parts": [{"text": "what?"}]}], "turnComplete": True}}))
    await until("turnComplete")
    await ws.send(json.dumps({"clientContent": {"turns": [
        {"role": "user", "parts": [{"text": "talk"}]}], "turnComplete": True}}))
    got.append(str(await ws.recv()))
    await ws.send(json.dumps({"realtimeInput": {"text": "stop"}}))
    await until("interrupted")
    await until("turnComplete")
    await ws.send(json.dumps({"bogus": {}}))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            got.append(str(await asyncio.wait_for(ws.recv(), 10)))
    return got, closed.value.rcvd


async def test_every_gemini_audio_message_fits_the_sdk() -> None:
    got: list[str] = []
    async with running(fake_runtime(tokens=20, delay_s=0.01, plugins=(flite,))) as address, \
            websockets.connect(f"{address.ws}{GEMINI_PATH}", max_size=None) as ws:
        await ws.send(json.dumps({"setup": {
            "model": "models/default", "outputAudioTranscription": {},
            "generationConfig": {"responseModalities": ["AUDIO"]}}}))
        got.append(str(await ws.recv()))
        await ws.send(json.dumps({"clientContent": {"turns": [
            {"role": "user", "parts": [{"text": "talk"}]}], "turnComplete": True}}))
        while "turnComplete" not in got[-1]:
            got.append(str(await asyncio.wait_for(ws.recv(), 15)))
    assert not gemini_problems(got), "\n".join(gemini_problems(got))
    msgs = [genai_types.LiveServerMessage.model_validate_json(m) for m in got]
    blobs = [p.inline_data for m in msgs if m.server_content and m.server_content.model_turn
             for p in m.server_content.model_turn.parts or [] if p.inline_data]
    assert blobs and all(b.mime_type == "audio/pcm;rate=24000" and b.data for b in blobs)
    said = [m.server_content.output_transcription.text for m in msgs
            if m.server_content and m.server_content.output_transcription]
    assert "".join(t or "" for t in said) == "".join(f"tok{i} " for i in range(20))


async def test_every_gemini_message_fits_the_sdk() -> None:
    async with running(fake_runtime(tokens=20, delay_s=0.01)) as address:
        got, close = await gemini_session(address)
    assert not gemini_problems(got), "\n".join(gemini_problems(got))
    msgs = [genai_types.LiveServerMessage.model_validate_json(m) for m in got]
    assert msgs[0].setup_complete is not None
    contents = [m.server_content for m in msgs if m.server_content is not None]
    assert sum(bool(c.turn_complete) for c in contents) == 2
    assert sum(bool(c.interrupted) for c in contents) == 1
    assert any(c.model_turn and c.model_turn.parts and c.model_turn.parts[0].text
               for c in contents)
    assert close is not None and close.code == 1007 and "unknown message" in close.reason
