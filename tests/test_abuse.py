"""A new user's abuse battery against a real server on port 0: malformed, oversized and
degenerate input on every protocol. Each case gets a clear error (an ``error`` event, an HTTP
4xx in OpenAI's shape, or a close code with a reason), the session goes on, and nothing is
logged at ERROR for a client's mistake."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from PIL import Image

from agent.protocols.realtime.session import RealtimeSession
from agent.testing import data_url, fake_runtime
from agent.uvicorn_server import Address, running
from tests.helpers import Client

GEMINI = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


@pytest.fixture
async def fake() -> AsyncIterator[Address]:
    async with running(fake_runtime(tokens=3)) as address:
        yield address


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Any:
    """Every test here: a client's mistake is never logged at ERROR (no traceback), also
    while its server and sessions close (this fixture is torn down after the server's)."""
    caplog.set_level(logging.INFO)
    yield
    records = [r for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def url(address: Address) -> str:
    return f"{address.ws}/v1/realtime?model=default"


def png(size: tuple[int, int], mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(side: int = 60_000) -> bytes:
    """A 1-bit PNG whose header declares side x side pixels (3.6 G), in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side // 8 + 1) * 100, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def image_item(image: bytes) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_image", "image_url": data_url(image, "image/png")}]}}


async def still_serves(client: Client) -> None:
    """The session goes on after the error."""
    await client.send({"type": "session.update", "session": {"type": "realtime"}})
    await client.until("session.updated")


async def errors_of_answer(client: Client) -> list[dict[str, Any]]:
    await client.send({"type": "response.create"})
    events = await client.until("response.done", timeout=30)
    return [e["error"] for e in events if e["type"] == "error"]


# --- OpenAI Realtime (GA) ---------------------------------------------------------------------

@pytest.mark.parametrize("message", [
    '{"type": "input_audio_buffer.append", "audio": "AAAA", "streamagent": {"timestamp": 1e999}}',
    '{"type": "conversation.item.create", "item": {"type": "message", "content": [{"type": '
    '"input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "streamagent": '
    '{"timestamp": 1e999}}]}}',
])
async def test_an_infinite_media_timestamp_is_refused(fake: Address, message: str) -> None:
    client = await Client.connect(url(fake))
    await client.send(message)
    error = await client.error()
    assert error["code"] == "invalid_request" and "finite" in error["message"], error
    assert error["param"].endswith("streamagent.timestamp")
    await still_serves(client)
    await client.close()


async def test_a_response_cancelled_before_it_starts_still_ends(fake: Address) -> None:
    """OpenAI's order: response.created, then response.done (cancelled), even when the cancel
    arrives before the response has begun."""
    client = await Client.connect(url(fake))
    await client.ws.send(json.dumps({"type": "response.create"}))
    await client.ws.send(json.dumps({"type": "response.cancel"}))
    events = await client.until("response.done")
    assert events[0]["type"] == "response.created"
    assert events[-1]["response"]["status"] == "cancelled"
    for _ in range(20):  # many more: each ends, and none is left behind in the session
        await client.ws.send(json.dumps({"type": "response.create"}))
        await client.ws.send(json.dumps({"type": "response.cancel"}))
        await client.until("response.done")
    await client.send({"type": "response.create"})
    done = (await client.until("response.done"))[-1]
    assert done["response"]["status"] == "completed"
    await client.close()


@pytest.mark.parametrize("streamagent", [
    {"handlers": ["nope"] * 100_000},
    {"handlers": ["echo"] * 100_000},
])
async def test_session_update_lists_are_bounded_and_errors_stay_short(
        fake: Address, streamagent: dict[str, Any]) -> None:
    """A session has a few handlers: 100 000 names are refused at the edge, and the error does
    not echo them back (an unknown-handlers error repeated every name, 600 KB here)."""
    client = await Client.connect(url(fake))
    await client.send({"type": "session.update", "session": {"streamagent": streamagent}})
    error = await client.error()
    assert error["code"] == "invalid_request" and len(error["message"]) < 1000, \
        error["message"][:200]
    await still_serves(client)
    await client.close()


async def test_a_burst_of_messages_lets_other_tasks_run_between_them() -> None:
    """uvicorn queues every message of one TCP read, and handling one rarely waits: the reader
    must still yield between messages (a burst of response.create / response.cancel pairs held
    the event loop, and every other session, for 20 s). Driven directly, as uvicorn's queue
    hands messages over, with a task beside it that counts its turns."""
    session = RealtimeSession(fake_runtime(), "default", lambda text: asyncio.sleep(0))
    turns = 0

    async def beside() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def burst() -> AsyncIterator[str]:
        for _ in range(100):
            yield json.dumps({"type": "session.update", "session": {}})

    probe = asyncio.create_task(beside())
    await session.run(burst())
    probe.cancel()
    assert turns >= 100


@pytest.mark.parametrize(("response", "code", "param"), [
    ({"instructions": "x" * 40_000}, "limit_exceeded", "response.instructions"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "invalid_request", "response.metadata"),
    ({"metadata": {"k": "v" * 513}}, "invalid_request", "response.metadata.k"),
    ({"metadata": {"k": {"nested": [1]}}}, "invalid_request", "response.metadata.k"),
])
async def test_response_create_parameters_are_bounded(fake: Address, response: dict[str, Any],
                                                      code: str, param: str) -> None:
    client = await Client.connect(url(fake))
    await client.send({"type": "response.create", "response": response})
    events = await client.until("error")
    assert [e["type"] for e in events] == ["error"]  # refused before any response began
    assert events[0]["error"]["code"] == code and events[0]["error"]["param"] == param
    await still_serves(client)
    await client.close()


async def test_a_decompression_bomb_is_invalid_media(embedded: Address) -> None:
    client = await Client.connect(url(embedded))
    await client.send(image_item(png_bomb()))
    errors = await errors_of_answer(client)
    assert errors and {e["code"] for e in errors} == {"invalid_media"}, errors
    assert "too large" in errors[0]["message"]
    await client.close()


async def test_a_degenerate_image_is_invalid_media_and_a_thin_one_is_read(
        embedded: Address) -> None:
    client = await Client.connect(url(embedded))
    await client.send(image_item(png((1, 100_000))))
    errors = await errors_of_answer(client)
    assert errors and {e["code"] for e in errors} == {"invalid_media"}, errors
    assert "200 to 1" in errors[0]["message"]
    await client.send(image_item(png((3200, 16))))  # within bounds: every model reads it
    assert await errors_of_answer(client) == []
    await client.close()


async def test_chat_refuses_a_degenerate_image_as_a_client_error(embedded: Address) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png((100_000, 1)), "image/png")}}]}]}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{embedded.http}/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_media"


async def test_a_corrupt_picture_is_named_without_the_decoders_internals(fake: Address) -> None:
    """A JPEG signature over junk passes the header check and fails in PIL, whose message
    names a Python object (``<_io.BytesIO object at 0x...>``): the client gets a plain one."""
    junk = data_url(b"\xff\xd8\xff" + b"junk" * 64)
    body = {"model": "fake", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": junk}}]}]}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{fake.http}/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert message.startswith("corrupt image") and "object at 0x" not in message, message


MANY = "[" + ",".join(["[]"] * 100_000) + "]"  # 300 KB of 100 001 lists to allocate


@pytest.mark.parametrize("headers", [{}, {"OpenAI-Beta": "realtime=v1"}])
async def test_a_message_of_too_many_json_containers_is_refused_before_parsing(
        fake: Address, headers: dict[str, str]) -> None:
    client = await Client.connect(url(fake), additional_headers=headers)
    await client.send('{"type": "session.update", "session": {"x": ' + MANY + "}}")
    assert "opens 100003 JSON objects and arrays" in (await client.error())["message"]
    await client.send({"type": "session.update", "session": {}})  # the session goes on
    await client.until("session.updated")
    await client.close()
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{fake.http}/v1/chat/completions", content=(
            '{"model": "fake", "messages": ' + MANY + "}").encode(),
            headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "opens" in reply.json()["error"]["message"], reply.text
    ws = await websockets.connect(f"{fake.ws}{GEMINI}", max_size=None)
    await ws.send('{"setup": ' + MANY + "}")
    with pytest.raises(websockets.ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1007
    assert "opens" in info.value.rcvd.reason


# --- OpenAI Realtime, beta dialect ------------------------------------------------------------

async def test_beta_dialect_refuses_deep_json_and_binary_frames_as_ga_does(fake: Address) -> None:
    client = await Client.connect(url(fake), additional_headers={"OpenAI-Beta": "realtime=v1"})
    await client.send('{"type": "session.update", "session": ' + "[" * 50_000 + "]" * 50_000 + "}")
    assert "not valid JSON" in (await client.error())["message"]
    await client.ws.send(json.dumps({"type": "session.update", "session": {}}).encode())
    assert "binary" in (await client.error())["message"]
    await client.send({"type": "session.update", "session": {}})
    await client.until("session.updated")
    await client.close()


# --- Gemini Live ------------------------------------------------------------------------------

SETUP = json.dumps({"setup": {"model": "models/default"}})
DEEP = "[" * 50_000 + "]" * 50_000


def audio(mime: str) -> str:
    return json.dumps({"realtimeInput": {"audio": {"mimeType": mime, "data": "AAAA"}}})


@pytest.mark.parametrize(("first", "second", "words"), [
    ("[]", None, "JSON object"),
    ('{"setup": ' + DEEP + "}", None, "not JSON"),
    (SETUP, '{"realtimeInput": ' + DEEP + "}", "not JSON"),
    (json.dumps({"setup": {"systemInstruction": {"parts": [5]}}}), None, "invalid setup"),
    (SETUP, audio("audio/pcm;rate=²"), "bad audio rate"),
    (SETUP, audio("audio/pcm;rate=" + "9" * 5000), "bad audio rate"),
])
async def test_gemini_malformed_messages_close_with_1007_and_a_reason(
        fake: Address, first: str, second: str | None, words: str) -> None:
    ws = await websockets.connect(f"{fake.ws}{GEMINI}", max_size=None)
    await ws.send(first)
    if second is not None:
        await ws.send(second)
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None, "closed without a close frame"
    assert info.value.rcvd.code == 1007 and words in info.value.rcvd.reason, info.value.rcvd


async def test_gemini_turns_in_quick_succession_interrupt_instead_of_closing() -> None:
    async with running(fake_runtime(tokens=50, delay_s=0.01)) as address:
        ws = await websockets.connect(f"{address.ws}{GEMINI}")
        await ws.send(SETUP)
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        end = json.dumps({"realtimeInput": {"audioStreamEnd": True}})
        for _ in range(5):
            await ws.send(end)
        ends = []
        while len(ends) < 5:
            content = json.loads(await asyncio.wait_for(ws.recv(), 15))["serverContent"]
            if "modelTurn" not in content:
                ends.append(content)
        assert ends[:4] == [{"interrupted": True}] * 4 and ends[4] == {"turnComplete": True}
        await ws.close()


# --- Chat completions and the session limit ---------------------------------------------------

async def test_chat_seed_is_a_64_bit_integer(fake: Address) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        ok = await http.post(f"{fake.http}/v1/chat/completions", json={**body, "seed": -1})
        huge = await http.post(f"{fake.http}/v1/chat/completions", json={**body, "seed": 2**64})
    assert ok.status_code == 200, ok.text
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "seed"


async def test_chat_takes_at_most_128_parts_per_message(fake: Address) -> None:
    part = {"type": "text", "text": "x"}
    async with httpx.AsyncClient() as http:
        replies = [await http.post(f"{fake.http}/v1/chat/completions", json={
            "model": "fake", "messages": [{"role": "user", "content": [part] * n}]})
            for n in (128, 129)]
    assert replies[0].status_code == 200, replies[0].text
    assert replies[1].status_code == 400
    assert replies[1].json()["error"]["param"] == "messages.0.content"


async def test_chat_takes_at_most_four_stop_sequences(fake: Address) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        ok = await http.post(f"{fake.http}/v1/chat/completions",
                             json={**body, "stop": ["a", "b", "c", "d"]})
        many = await http.post(f"{fake.http}/v1/chat/completions",
                               json={**body, "stop": ["x"] * 100_000})
    assert ok.status_code == 200, ok.text
    assert many.status_code == 400 and many.json()["error"]["param"].startswith("stop")


@pytest.mark.parametrize(("content", "param", "words"), [
    ([{"type": "file", "file": {}}], "messages.0.content.0", "'file'"),
    ([{"type": "image_url", "image_url": 5}], "messages.0.content.0.image_url", "object"),
])
async def test_chat_names_the_part_that_is_wrong(fake: Address, content: list[Any], param: str,
                                                 words: str) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": content}]}
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{fake.http}/v1/chat/completions", json=body)
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["param"] == param, error
    assert error["message"].startswith(param + ":") and words in error["message"]


async def test_a_socket_turned_away_at_the_session_limit_logs_no_error() -> None:
    runtime = fake_runtime()
    runtime.config.server.max_sessions = 1
    async with running(runtime) as address:
        first = await Client.connect(url(address))
        for path in ("/v1/realtime?model=default", GEMINI):
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(f"{address.ws}{path}")
            assert info.value.response.status_code == 503
        await first.close()


async def test_invalid_utf8_in_a_text_frame_closes_1007_and_logs_no_error(fake: Address) -> None:
    """Raw frames: a websocket client library would refuse to send this."""
    reader, writer = await asyncio.open_connection(fake.host, fake.port)
    writer.write(b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    payload = b'{"type": "\xff"}'  # masked with a zero key: the payload goes as is
    writer.write(bytes([0x81, 0x80 | len(payload)]) + b"\x00" * 4 + payload)
    while True:  # server frames (unmasked) until the close frame
        head = await asyncio.wait_for(reader.readexactly(2), 10)
        size = head[1] & 0x7F
        if size >= 126:
            size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8), "big")
        body = await reader.readexactly(size)
        if head[0] & 0x0F == 0x8:
            break
    assert struct.unpack(">H", body[:2])[0] == 1007
    writer.close()


@pytest.mark.parametrize(("line", "status"), [
    ("GET /v1/realtime?model=" + "x" * 10_000 + " HTTP/1.1", b"414"),
    ("GET /v1/realtime HTTP/1.1\r\nAuthorization: Bearer " + "k" * 10_000, b"431"),
])
async def test_an_upgrade_websockets_cannot_parse_is_answered_and_closed(
        fake: Address, line: str, status: bytes) -> None:
    reader, writer = await asyncio.open_connection(fake.host, fake.port)
    writer.write(f"{line}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    reply = await asyncio.wait_for(reader.read(), 10)  # all of it: the server closes
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:100]
    writer.close()
