"""Misbehaving clients against a real server on port 0: sessions always end, one active
response, bounded input, honest response lifecycles."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets

from agent import Handler, ModelRequest, Part, Window, hookimpl
from agent.protocols.outbox import Outbox
from agent.runtime import Runtime
from agent.testing import data_url, fake_runtime, image_event, jpeg_bytes
from agent.uvicorn_server import Address, running
from tests.helpers import Client, texts


@pytest_asyncio.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Address, Runtime]]:
    options: dict[str, Any] = dict(getattr(request, "param", {}))
    server = options.pop("server", {})
    runtime = fake_runtime(**options)
    for key, value in server.items():
        setattr(runtime.config.server, key, value)
    async with running(runtime) as address:
        yield address, runtime


def url(address: Address) -> str:
    return f"{address.ws}/v1/realtime?model=default"


async def open_sessions(address: Address) -> int:
    async with httpx.AsyncClient() as http:
        return int((await http.get(f"{address.http}/healthz")).json()["sessions"])


async def until_sessions(address: Address, n: int, within_s: float = 30) -> None:
    """Poll /healthz until ``n`` sessions are open (a liveness check, not a timing one)."""
    for _ in range(int(within_s * 10)):
        if await open_sessions(address) == n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"sessions stayed at {await open_sessions(address)}, expected {n}")


def echo_item(text: str) -> str:
    """An item the server echoes twice (added, done): each costs the server 2x its size."""
    return json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "content": [{"type": "input_text",
                                                             "text": text}]}})


async def flood_unread(ws: websockets.ClientConnection, max_messages: int = 3000) -> int:
    """Send echoed items without reading until the server stops reading us."""
    big = "x" * 30_000
    for sent in range(max_messages):
        try:
            await asyncio.wait_for(ws.send(echo_item(big)), 2)
        except TimeoutError:
            return sent
    raise AssertionError("the server kept reading although its events were never read")


@pytest.mark.parametrize("served", [{"server": {"slow_client_timeout_s": 60}}], indirect=True)
async def test_a_client_that_stops_reading_then_vanishes_frees_its_session(served: Any) -> None:
    address, _ = served
    ws = await websockets.connect(url(address), max_queue=1, max_size=None)
    assert await flood_unread(ws) > 0
    assert await open_sessions(address) == 1
    ws.transport.abort()  # gone, without a close handshake, its events never read
    await until_sessions(address, 0)  # well before slow_client_timeout_s


@pytest.mark.parametrize("served", [{"server": {"slow_client_timeout_s": 1,
                                                "max_sessions": 1}}], indirect=True)
async def test_a_connected_client_that_never_reads_is_closed(served: Any) -> None:
    address, _ = served
    ws = await websockets.connect(url(address), max_queue=1, max_size=None)
    await flood_unread(ws)
    await until_sessions(address, 0)
    other = await Client.connect(url(address))  # its place under max_sessions is free again
    await other.close()
    ws.transport.abort()


def noise_jpeg() -> bytes:
    """A 640x480 JPEG of noise: about 300 KB, so its echoes are large."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("served", [{"server": {"slow_client_timeout_s": 1,
                                                "max_frames_per_s": 1000,
                                                "max_outbox_bytes": 1 << 20}}], indirect=True)
async def test_unread_events_are_bounded_in_bytes(served: Any) -> None:
    """100 pictures echoed twice are 200 events, under the 256-event bound, but 80 MB: a
    client that never reads them is closed once 1 MiB of them waits, not when 256 do."""
    address, _ = served
    ws = await websockets.connect(url(address), max_queue=1, max_size=None)
    item = json.dumps(image_event(data_url(noise_jpeg())))
    await until_sessions(address, 1)

    async def flood() -> None:
        with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
            for _ in range(100):
                await asyncio.wait_for(ws.send(item), 5)

    sending = asyncio.create_task(flood())  # a send blocks once the server stops reading:
    await until_sessions(address, 0)  # stop it when the session is closed, not after 5 s
    sending.cancel()
    ws.transport.abort()


async def test_outbox_waits_for_room_in_bytes_and_passes_one_large_event() -> None:
    box = Outbox("s", stall_s=0.3, max_bytes=1000)
    await box.put({"t": "x" * 5000})  # larger than the bound: waits alone, so it goes in
    assert box.qsize() == 1 and box.bytes > 1000
    waiting = asyncio.create_task(box.put({"t": "small"}))
    await asyncio.sleep(0.1)
    assert not waiting.done() and box.qsize() == 1  # no room while the large one waits
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    writer = asyncio.create_task(box.write(send))
    await asyncio.wait_for(waiting, 1)  # taken by the writer: room again
    await asyncio.sleep(0)
    assert [json.loads(t)["t"][:5] for t in sent] == ["xxxxx", "small"] and box.bytes == 0
    writer.cancel()
    for _ in range(3):
        await box.put({"t": "y" * 400})  # 2 fit; the third waits 0.3 s, then the session ends
    assert box.stalled.is_set() and box.close_code == 1008 and box.bytes <= 1000


@pytest.mark.parametrize("served", [{"delay_s": 0.05, "tokens": 20}], indirect=True)
async def test_one_active_response_per_conversation(served: Any) -> None:
    address, _ = served
    client = await Client.connect(url(address))
    await client.send({"type": "response.create"})
    await client.send({"type": "response.create", "event_id": "second"})
    error = await client.error()
    assert error["code"] == "conversation_already_has_active_response"
    assert error["event_id"] == "second"
    got = await client.until("response.done")
    assert got[-1]["response"]["status"] == "completed"
    assert len(texts(got)) == 20
    await client.send({"type": "response.create"})  # finished: a new one may start
    assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"
    starts = [e for e in client.seen if e["type"] == "response.created"]
    assert len(starts) == 2
    await client.close()


@pytest.mark.parametrize("served", [{"tokens": 10}], indirect=True)
async def test_max_output_tokens_caps_the_model(served: Any) -> None:
    address, runtime = served
    client = await Client.connect(url(address))
    await client.send({"type": "session.update", "session": {"max_output_tokens": 3}})
    assert (await client.until("session.updated"))[-1]["session"]["max_output_tokens"] == 3
    await client.send({"type": "response.create"})
    got = await client.until("response.done")
    assert len(texts(got)) == 3
    done = got[-1]["response"]
    assert done["status"] == "incomplete"  # as OpenAI says when the token limit stopped it
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert done["usage"]["output_tokens"] == 3
    await client.send({"type": "response.create", "response": {"max_output_tokens": 2}})
    assert len(texts(await client.until("response.done"))) == 2
    fake = runtime.pool.engines["fake"]
    assert [r.options["max_new_tokens"] for r in fake.requests] == [3, 2]
    await client.send({"type": "session.update", "session": {"max_output_tokens": 0}})
    assert (await client.error())["param"].startswith("session.max_output_tokens")
    await client.close()


class Narrator(Handler):
    """Live: streams the fake model's tokens for every window with a frame."""

    name = "narrator"
    modality = "image"
    default_model = "fake"
    enabled_by_default = False

    async def respond(self, work: Window) -> AsyncIterator[Part]:
        async for part in self.ctx.stream(ModelRequest(prompt=f"window {work.index}")):
            yield part


class NarratorPlugin:
    @hookimpl
    def register_handlers(self, register: Any) -> None:
        register(Narrator)


@pytest.mark.parametrize("served", [{"handlers": ("narrator",), "live": True, "delay_s": 0.1,
                                     "tokens": 50, "plugins": (NarratorPlugin(),)}],
                         indirect=True)
async def test_a_handler_removed_mid_response_still_ends_it(served: Any) -> None:
    address, _ = served
    client = await Client.connect(url(address))
    await client.send(image_event(data_url(jpeg_bytes("a")), timestamp=0.1))
    await client.send(image_event(data_url(jpeg_bytes("b")), timestamp=1.1))
    await client.until("response.output_text.delta")
    await client.update(handlers=[])
    done = (await client.until("response.done"))[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled",
                                      "streamagent": {"reason": "handler_stopped"}}
    await client.close()


@pytest.mark.parametrize("served", [{"server": {"max_pending_text_chars": 100,
                                                "max_item_text_chars": 80}}], indirect=True)
async def test_text_is_bounded_per_item_and_while_pending(served: Any) -> None:
    address, _ = served
    client = await Client.connect(url(address))

    def item(text: str) -> dict[str, Any]:
        return {"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text",
                                                            "text": text}]}}

    await client.send(item("y" * 81))
    assert "max_item_text_chars" in (await client.error())["message"]
    await client.send(item("y" * 60))
    await client.until("conversation.item.done")
    await client.send(item("y" * 60))
    error = await client.error()
    assert error["code"] == "limit_exceeded" and "max_pending_text_chars" in error["message"]
    await client.send({"type": "response.create"})  # asking empties what waits
    await client.until("response.done")
    await client.send(item("y" * 60))
    await client.until("conversation.item.done")
    await client.close()


@pytest.mark.parametrize("served", [{"server": {"max_audio_s_per_s": 1.0}}], indirect=True)
async def test_audio_faster_than_the_limit_is_refused(served: Any) -> None:
    address, _ = served
    client = await Client.connect(url(address))
    second = base64.b64encode(bytes(2 * 24000)).decode()  # 1 s of PCM16 at 24 kHz
    for _ in range(12):  # 10 s of burst allowance, then the rate
        await client.send({"type": "input_audio_buffer.append", "audio": second})
    error = await client.error()
    assert error["code"] == "rate_limit_exceeded" and "max_audio_s_per_s" in error["message"]
    await client.close()


async def test_close_log_counts_refused_frames(served: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    address, runtime = served
    runtime.config.server.max_frames_per_s = 2
    caplog.set_level(logging.INFO, logger="agent.conversation")
    client = await Client.connect(url(address))
    frame = image_event(data_url(jpeg_bytes("x")))
    for _ in range(5):
        await client.send(frame)
    await client.error()
    await client.close()
    await until_sessions(address, 0)
    closed = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert closed and "5 frames" not in closed[0] and "refused" in closed[0]
    refused = int(closed[0].split(" refused")[0].rsplit(" ", 1)[1])
    assert refused >= 3, closed


@pytest.mark.parametrize("served", [{"server": {"max_audio_s_per_s": 100}}], indirect=True)
async def test_audio_past_a_windows_bound_is_reported(served: Any) -> None:
    address, _ = served
    client = await Client.connect(url(address))
    await client.update(sample_fps=0.02)  # 50 s windows; a window keeps at most 30 s
    second = base64.b64encode(bytes(2 * 24000)).decode()
    for t in range(31):
        await client.send({"type": "input_audio_buffer.append", "audio": second,
                           "streamagent": {"timestamp": float(t)}})
    error = await client.error()
    assert error["code"] == "limit_exceeded" and "at most 30 s" in error["message"]
    await client.close()


class Broken(Handler):
    """A handler whose constructor raises, as one with a bad option does."""

    name = "broken"
    modality = "image"
    enabled_by_default = False

    def __init__(self, *args: Any) -> None:
        raise FileNotFoundError("few_shot: no such file 'missing.json'")


class BrokenPlugin:
    @hookimpl
    def register_handlers(self, register: Any) -> None:
        register(Broken)


@pytest.mark.parametrize("served", [{"handlers": ("broken", "echo"),
                                     "plugins": (BrokenPlugin(),)}], indirect=True)
async def test_a_handler_that_fails_to_start_is_an_error_and_the_rest_runs(served: Any) -> None:
    address, _ = served
    before = asyncio.all_tasks()
    client = await Client.connect(url(address))
    error = await client.error()
    assert error["code"] == "handler_failed" and "missing.json" in error["message"]
    assert client.seen[0]["session"]["streamagent"]["handlers"] == ["echo"]
    await client.send({"type": "response.create"})
    assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"
    await client.close()
    await until_sessions(address, 0)
    await nothing_left_of(before)


async def nothing_left_of(before: set[asyncio.Task[Any]], within_s: float = 5) -> None:
    """No task started since ``before`` is still running (the session's reader, writer,
    workers, ticker and responses all ended with it)."""
    left: list[asyncio.Task[Any]] = []
    for _ in range(int(within_s * 20)):
        left = [t for t in asyncio.all_tasks() - before
                if t is not asyncio.current_task() and not t.done()]
        if not left:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still running: {sorted(t.get_name() for t in left)}")


async def _closed_by_server(reader: asyncio.StreamReader, within_s: float = 10) -> bytes:
    """Read until the server closes the connection; what it sent before."""
    return await asyncio.wait_for(reader.read(), within_s)


@pytest.mark.parametrize("served", [{"server": {"read_timeout_s": 0.5}}], indirect=True)
async def test_connections_without_timely_headers_are_closed(served: Any) -> None:
    """Silent sockets, headers a byte at a time, and a chat body that never comes hold
    nothing: no session or request counts them, so only a read timeout frees them."""
    address, _ = served
    silent = await asyncio.open_connection(address.host, address.port)
    dribble = await asyncio.open_connection(address.host, address.port)
    dribble[1].write(b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\n")

    async def keep_dribbling() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                dribble[1].write(b"X")
                await dribble[1].drain()
                await asyncio.sleep(0.1)

    dribbling = asyncio.create_task(keep_dribbling())
    assert await _closed_by_server(silent[0]) == b""
    assert await _closed_by_server(dribble[0]) == b""
    dribbling.cancel()
    body_reader, body_writer = await asyncio.open_connection(address.host, address.port)
    body_writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    reply = await asyncio.wait_for(body_reader.readuntil(b"\r\n"), 10)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    for writer in (silent[1], dribble[1], body_writer):
        writer.close()
