"""The gateway with a real websocket server on port 0 and real clients, over a fake engine."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets

from agent.runtime import Runtime
from agent.testing import FakeEngine, data_url, fake_runtime, image_event, jpeg_bytes
from agent.uvicorn_server import Address, running
from tests.helpers import Client, texts

ORDER = ["response.created", "response.output_item.added", "response.content_part.added",
         "response.output_text.delta", "response.output_text.done",
         "response.content_part.done", "response.output_item.done", "response.done"]


@pytest_asyncio.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Address, Runtime]]:
    options: dict[str, Any] = getattr(request, "param", {})
    runtime = fake_runtime(**options)
    async with running(runtime) as address:
        yield address, runtime


def url(address: Address, model: str = "default") -> str:
    return f"{address.ws}/v1/realtime?model={model}"


def engine(runtime: Runtime) -> FakeEngine:
    fake = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
    assert isinstance(fake, FakeEngine)
    return fake


def collapse(types: list[str]) -> list[str]:
    out: list[str] = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


async def test_question_gets_one_response_with_every_event_in_order(served: Any) -> None:
    address, runtime = served
    client = await Client.connect(url(address))
    await client.send(image_event(data_url(jpeg_bytes("hi")), text="what is this?"))
    added = (await client.until("conversation.item.added"))[-1]
    await client.send({"type": "response.create",
                       "response": {"metadata": {"client_event_id": "ce_1"}}})
    got = await client.until("response.done")
    responses = [e for e in got if e["type"].startswith("response.")]
    assert collapse([e["type"] for e in responses]) == ORDER
    assert texts(got) == [f"tok{i} " for i in range(5)]
    done = got[-1]["response"]
    assert done["status"] == "completed"
    assert done["metadata"]["client_event_id"] == "ce_1"
    assert done["metadata"]["handler"] == "echo"
    assert done["output"][0]["content"][0]["text"] == "tok0 tok1 tok2 tok3 tok4 "
    rid = responses[0]["response"]["id"]
    item_id = responses[1]["item"]["id"]
    for e in responses[1:-1]:
        assert e["response_id"] == rid
    for e in responses:
        if e["type"] == "response.output_text.delta":
            assert (e["item_id"], e["output_index"], e["content_index"]) == (item_id, 0, 0)
    assert added["item"]["role"] == "user"
    assert engine(runtime).requests[-1].prompt == "what is this?"
    await client.close()


async def test_item_id_from_client_is_echoed(served: Any) -> None:
    address, _ = served
    client = await Client.connect(url(address))
    await client.send({"type": "conversation.item.create", "previous_item_id": "root", "item": {
        "id": "item_mine", "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "hello"}]}})
    added = (await client.until("conversation.item.added"))[-1]
    assert added["item"]["id"] == "item_mine" and added["previous_item_id"] == "root"


@pytest.mark.parametrize("served", [{"tokens": 200, "delay_s": 0.02}], indirect=True)
async def test_cancel_mid_stream_stops_the_engine(served: Any) -> None:
    address, runtime = served
    client = await Client.connect(url(address))
    await client.send({"type": "response.create"})
    await client.until("response.output_text.delta")
    await client.until("response.output_text.delta")
    await client.send({"type": "response.cancel"})
    got = await client.until("response.done")
    assert got[-1]["response"]["status"] == "cancelled"
    fake = engine(runtime)
    stopped_at = fake.generated
    await asyncio.sleep(0.3)
    assert fake.generated == stopped_at < 50
    assert fake.active == 0
    await client.send({"type": "response.cancel"})
    assert (await client.error())["code"] == "response_cancel_not_active"


@pytest.mark.parametrize("served", [{"live": True}], indirect=True)
async def test_live_mode_answers_each_window_with_its_media_times(served: Any) -> None:
    address, _ = served
    client = await Client.connect(url(address))
    await client.update(sample_fps=2)
    for i in range(8):  # 4 fps for 2 s, sent at 4x real time: windows of 0.5 s
        await client.send(image_event(data_url(jpeg_bytes(str(i))), timestamp=i * 0.25 + 0.01))
        await asyncio.sleep(0.06)
    dones = []
    for _ in range(3):
        dones.append((await client.until("response.done"))[-1]["response"])
    spans = [(d["metadata"]["window_start_ms"], d["metadata"]["window_end_ms"]) for d in dones]
    assert spans == [("0", "500"), ("500", "1000"), ("1000", "1500")]
    assert [d["output"][0]["content"][0]["text"] for d in dones] == [
        "window 0: 320x240", "window 1: 320x240", "window 2: 320x240"]
    assert all(d["metadata"]["handler"] == "echo" for d in dones)


@pytest.mark.parametrize("served", [{"live": True}], indirect=True)
async def test_bad_input_gets_errors_and_the_session_goes_on(served: Any) -> None:
    address, _ = served
    client = await Client.connect(url(address))
    bad: list[tuple[Any, str]] = [
        ("{oops", "invalid_request"),
        ({"type": "response.explode"}, "unknown_event"),
        ({"type": "input_audio_buffer.append"}, "invalid_request"),
        ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()},
         "invalid_media"),
        ({"type": "input_audio_buffer.append", "audio": "***"}, "invalid_media"),
        (image_event(data_url(b"plain text, no picture")), "invalid_media"),
        (image_event("https://example.invalid/cat.jpg"), "invalid_media"),
        ({"type": "session.update", "session": {"audio": {"input": {"format": {
            "type": "audio/pcm", "rate": 12345}}}}}, "invalid_media"),
        ({"type": "session.update", "session": {"streamagent": {"handlers": ["nope"]}}},
         "invalid_request"),
    ]
    for message, code in bad:
        await client.send(message)
        error = await client.error()
        assert error["code"] == code, (message, error)
        assert error["message"]
    await client.ws.send(b"\x00binary")
    assert "binary" in (await client.error())["message"]
    # A corrupt JPEG passes the cheap check and fails when the handler decodes it.
    await client.send(image_event(data_url(jpeg_bytes("x")[:400]), timestamp=0.1))
    await client.send(image_event(data_url(jpeg_bytes("y")), timestamp=1.1))
    error = await client.error()
    assert error["code"] == "invalid_media" and "corrupt image" in error["message"]
    # ...and the session still works.
    await client.send(image_event(data_url(jpeg_bytes("z")), timestamp=2.1))
    done = (await client.until("response.done"))[-1]["response"]
    assert done["output"][0]["content"][0]["text"] == "window 1: 320x240"


@pytest.mark.parametrize("served", [{"fail_after": 2}], indirect=True)
async def test_engine_failure_fails_the_response_not_the_session(served: Any) -> None:
    address, _ = served
    client = await Client.connect(url(address))
    await client.send({"type": "response.create"})
    got = await client.until("response.done")
    assert texts(got) == ["tok0 ", "tok1 "]
    assert [e for e in got if e["type"] == "error"][0]["error"]["code"] == "engine_error"
    assert got[-1]["response"]["status"] == "failed"
    await client.send({"type": "session.update", "session": {}})
    await client.until("session.updated")


async def test_oversized_message_closes_only_that_session(served: Any) -> None:
    address, runtime = served
    limit = runtime.config.server.max_message_bytes
    other = await Client.connect(url(address))
    client = await Client.connect(url(address))
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.send({"type": "input_audio_buffer.append", "audio": "A" * (limit + 10)})
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await other.send({"type": "response.create"})
    assert (await other.until("response.done"))[-1]["response"]["status"] == "completed"


@pytest.mark.parametrize("served", [{"tokens": 200, "delay_s": 0.01}], indirect=True)
async def test_client_gone_mid_response_stops_the_engine(served: Any) -> None:
    address, runtime = served
    client = await Client.connect(url(address))
    await client.send({"type": "response.create"})
    await client.until("response.output_text.delta")
    await client.ws.close()
    fake = engine(runtime)
    for _ in range(100):
        if fake.active == 0:
            break
        await asyncio.sleep(0.02)
    assert fake.active == 0 and fake.generated < 200  # 2 s a whole answer: not waited out
    again = await Client.connect(url(address))
    await again.send({"type": "response.create", "response": {}})
    assert (await again.until("response.done"))[-1]["response"]["status"] == "completed"


async def test_unknown_model_is_refused_naming_the_known_ones(served: Any) -> None:
    address, _ = served
    async with websockets.connect(url(address, "gpt-realtime")) as ws:
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["code"] == "model_not_found"
        assert "'default'" in error["error"]["message"] or "default" in error["error"]["message"]
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    client = await Client.connect(f"{address.ws}/v1/realtime")  # no model: the default
    await client.close()


async def test_healthz(served: Any) -> None:
    """Health is real: a model whose engine is closed (its worker threads gone) fails it."""
    address, runtime = served
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"{address.http}/healthz")
        assert reply.status_code == 200
        assert reply.json()["models"] == {"fake": True}
        await engine(runtime).close()
        reply = await http.get(f"{address.http}/healthz")
    assert reply.status_code == 503
    body = reply.json()
    assert set(body["loop_lag_ms"]) == {"p95", "max"} and body["tasks"] > 0
    assert body | {"tasks": 0, "loop_lag_ms": {}} == {
        "status": "unavailable", "sessions": 0, "tasks": 0, "loop_lag_ms": {},
        "models": {"fake": False}, "profiles": runtime.profile_names}


async def test_api_key_is_checked_before_the_upgrade() -> None:
    runtime = fake_runtime()
    runtime.config.server.api_key = "sekret"
    async with running(runtime) as address:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(url(address), additional_headers=headers)
            assert info.value.response.status_code == 401
            assert b"invalid_api_key" in info.value.response.body
        client = await Client.connect(url(address),
                                      additional_headers={"Authorization": "Bearer sekret"})
        await client.close()


async def test_session_limit_and_frame_rate_limit() -> None:
    runtime = fake_runtime()
    runtime.config.server.max_sessions = 1
    runtime.config.server.max_frames_per_s = 5
    async with running(runtime) as address:
        client = await Client.connect(url(address))
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(url(address))
        assert info.value.response.status_code == 503
        frame = image_event(data_url(jpeg_bytes()))
        for _ in range(8):
            await client.send(frame)
        error = await client.error()
        assert error["code"] == "rate_limit_exceeded"
        await client.close()


def test_listening_socket_is_tcp_so_asyncio_turns_nagle_off() -> None:
    import socket

    from agent.uvicorn_server import bind

    sock = bind("127.0.0.1", 0)
    try:  # asyncio sets TCP_NODELAY only on accepted sockets whose proto is IPPROTO_TCP
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


@pytest.fixture
def tls_files(tmp_path: Any) -> tuple[str, str]:
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


async def test_tls_serves_wss(tls_files: tuple[str, str]) -> None:
    import ssl

    runtime = fake_runtime()
    runtime.config.server.tls_certfile, runtime.config.server.tls_keyfile = tls_files
    async with running(runtime) as address:
        assert address.ws.startswith("wss://")
        ctx = ssl.create_default_context(cafile=tls_files[0])
        client = await Client.connect(url(address), ssl=ctx)
        await client.send({"type": "response.create"})
        assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"
        await client.close()
