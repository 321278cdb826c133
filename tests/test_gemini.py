"""The Gemini Live-compatible websocket: the official google-genai SDK over TLS (a certificate
made here), and raw camelCase clients, over the same sessions as /v1/realtime."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import websockets
from google import genai
from google.genai import types

from agent.config import Config, ServerConfig
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import ServerThread, data_url, fake_runtime, jpeg_bytes
from agent.uvicorn_server import Address, running

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl makes the test certificate"
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return str(d / "cert.pem"), str(d / "key.pem")


@pytest.fixture(scope="module")
def embedded_tls(cert: tuple[str, str]) -> Iterator[Address]:
    config = Config(server=ServerConfig(tls_certfile=cert[0], tls_keyfile=cert[1],
                                        api_key="gemini-key"))
    with ServerThread(Runtime.build(config, get_plugin_manager())) as address:
        yield address


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "ocr"])
async def test_google_genai_sdk_answers_as_chat_completions_do(
        embedded_tls: Address, cert: tuple[str, str], name: str) -> None:
    """A profile and a model name each give the same text here as on chat completions."""
    ctx = ssl.create_default_context(cafile=cert[0])
    client = genai.Client(api_key="gemini-key", http_options=types.HttpOptions(
        base_url=f"https://127.0.0.1:{embedded_tls.port}", async_client_args={"ssl": ctx}))
    picture = jpeg_bytes("HELLO GEMINI", size=(640, 240))
    text = []
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    async with client.aio.live.connect(model=name, config=config) as session:
        await session.send_realtime_input(video=types.Blob(data=picture,
                                                           mime_type="image/jpeg"))
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="What is written?")]),
            turn_complete=True)
        async for message in session.receive():
            if message.text:
                text.append(message.text)
    assert "HELLO GEMINI" in "".join(text)
    async with openai.AsyncOpenAI(
            base_url=f"{embedded_tls.http}/v1", api_key="gemini-key",
            http_client=httpx.AsyncClient(verify=ctx)) as chat:
        reply = await chat.chat.completions.create(model=name, messages=[
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(picture)}},
                {"type": "text", "text": "What is written?"}]}])
    assert reply.choices[0].message.content == "".join(text)


@pytest.mark.slow
async def test_google_genai_sdk_unknown_name_closes_listing_names(
        embedded_tls: Address, cert: tuple[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=cert[0])
    client = genai.Client(api_key="gemini-key", http_options=types.HttpOptions(
        base_url=f"https://127.0.0.1:{embedded_tls.port}", async_client_args={"ssl": ctx}))
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    with pytest.raises(genai.errors.APIError) as info:  # the SDK's error for a close code
        async with client.aio.live.connect(model="gpt-9", config=config) as session:
            async for _ in session.receive():
                pass
    assert info.value.code == 1008
    assert "unknown model 'gpt-9'; profiles: default" in str(info.value)


async def raw(address: Address, path: str = PATH) -> websockets.ClientConnection:
    return await websockets.connect(f"{address.ws}{path}", max_size=None)


async def until_turn_end(ws: websockets.ClientConnection) -> tuple[list[str], dict[str, Any]]:
    parts = []
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
        content = msg.get("serverContent", {})
        parts += [p["text"] for p in content.get("modelTurn", {}).get("parts", [])]
        if content.get("turnComplete") or content.get("interrupted"):
            return parts, content


async def test_raw_camel_case_client_and_doubled_slash() -> None:
    async with running(fake_runtime()) as address:
        ws = await raw(address, "/" + PATH)  # "//ws/...": collapsed
        await ws.send(json.dumps({"setup": {"model": "models/default",
                                            "generationConfig": {"responseModalities": ["TEXT"]},
                                            "systemInstruction": {"parts": [{"text": "Hi."}]}}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        frame = base64.urlsafe_b64encode(jpeg_bytes("x")).decode()  # the SDK's alphabet
        await ws.send(json.dumps({"realtimeInput": {"mediaChunks": [
            {"mimeType": "image/jpeg", "data": frame}]}}))
        pcm = base64.b64encode(b"\x00\x00" * 1600).decode()
        await ws.send(json.dumps({"realtime_input": {"audio": {
            "mime_type": "audio/pcm;rate=16000", "data": pcm}}}))
        await ws.send(json.dumps({"clientContent": {"turns": [
            {"role": "user", "parts": [{"text": "what?"}]}], "turnComplete": True}}))
        parts, end = await until_turn_end(ws)
        assert parts == [f"tok{i} " for i in range(5)] and end == {"turnComplete": True}
        await ws.close()


async def test_new_user_activity_interrupts_the_response() -> None:
    # 2 s an answer: ample time to interrupt the first, and the second is waited out whole
    async with running(fake_runtime(tokens=200, delay_s=0.01)) as address:
        ws = await raw(address)
        await ws.send(json.dumps({"setup": {"model": "models/default"}}))
        await ws.recv()
        await ws.send(json.dumps({"clientContent": {"turns": [
            {"role": "user", "parts": [{"text": "talk"}]}], "turnComplete": True}}))
        first = json.loads(await ws.recv())
        assert first["serverContent"]["modelTurn"]["parts"][0]["text"] == "tok0 "
        await ws.send(json.dumps({"realtimeInput": {"text": "stop, another question"}}))
        _, end = await until_turn_end(ws)
        assert end == {"interrupted": True}
        parts, end = await until_turn_end(ws)  # then the new question is answered
        assert end == {"turnComplete": True} and len(parts) == 200
        await ws.close()


@pytest.mark.parametrize(("first", "second", "code", "words"), [
    ("not json", None, 1007, "setup"),
    (json.dumps({"setup": {"model": "models/gpt-9"}}), None, 1008, "unknown model 'gpt-9'"),
    (json.dumps({"setup": {}}), json.dumps({"bogus": {}}), 1007, "unknown message"),
    (json.dumps({"setup": {}}), json.dumps({"realtimeInput": {"video": {
        "mimeType": "video/mp4", "data": "AAAA"}}}), 1007, "unsupported mimeType"),
    (json.dumps({"setup": {}}), json.dumps({"realtimeInput": {"video": {
        "mimeType": "image/jpeg", "data": base64.b64encode(b"no image").decode()}}}), 1007,
     "not a JPEG"),
    (json.dumps({"setup": {}}), json.dumps({"realtimeInput": {"audio": {
        "mimeType": "audio/pcm;rate=fast", "data": "AAAA"}}}), 1007, "bad audio rate"),
    (json.dumps({"setup": {}}), json.dumps({"realtimeInput": {"audio": {
        "mimeType": "audio/pcm;rate=12345", "data": "AAAA"}}}), 1007,
     "unsupported audio rate"),
])
async def test_bad_messages_close_with_a_reason(first: str, second: str | None, code: int,
                                                words: str) -> None:
    async with running(fake_runtime()) as address:
        ws = await raw(address)
        await ws.send(first)
        if second is not None:
            assert json.loads(await ws.recv()) == {"setupComplete": {}}
            await ws.send(second)
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == code and words in info.value.rcvd.reason


async def test_api_key_header_or_query() -> None:
    runtime = fake_runtime()
    runtime.config.server.api_key = "k"
    async with running(runtime) as address:
        for bad in ({}, {"x-goog-api-key": "wrong"}):
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(f"{address.ws}{PATH}", additional_headers=bad)
            assert info.value.response.status_code == 401
        for path, headers in ((PATH + "?key=k", {}), (PATH, {"x-goog-api-key": "k"})):
            ws = await websockets.connect(f"{address.ws}{path}", additional_headers=headers)
            await ws.send(json.dumps({"setup": {}}))
            assert json.loads(await ws.recv()) == {"setupComplete": {}}
            await ws.close()


async def test_gemini_sessions_count_toward_the_session_limit() -> None:
    runtime = fake_runtime()
    runtime.config.server.max_sessions = 1
    async with running(runtime) as address:
        ws = await raw(address)
        await ws.send(json.dumps({"setup": {}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(f"{address.ws}/v1/realtime")
        assert info.value.response.status_code == 503
        await ws.close()


async def test_a_socket_counts_from_accept_and_is_closed_without_setup() -> None:
    runtime = fake_runtime()
    runtime.config.server.max_sessions = 1
    runtime.config.server.gemini_setup_timeout_s = 0.5
    async with running(runtime) as address:
        idle = await raw(address)  # accepted, sends nothing
        with pytest.raises(websockets.InvalidStatus) as info:
            await raw(address)
        assert info.value.response.status_code == 503
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(idle.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "server.gemini_setup_timeout_s" in closed.value.rcvd.reason
        for _ in range(100):  # the closed socket's place is free again
            try:
                ws = await raw(address)
                break
            except websockets.InvalidStatus:
                await asyncio.sleep(0.05)
        await ws.send(json.dumps({"setup": {}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        await ws.close()


async def test_sockets_arriving_together_admit_exactly_the_limit() -> None:
    runtime = fake_runtime()
    runtime.config.server.max_sessions = 3
    async with running(runtime) as address:
        got = await asyncio.gather(*(raw(address) for _ in range(10)), return_exceptions=True)
        opened = [ws for ws in got if isinstance(ws, websockets.ClientConnection)]
        refused = [e for e in got if isinstance(e, websockets.InvalidStatus)]
        assert len(opened) == 3 and len(refused) == 7
        for ws in opened:
            await ws.close()


@pytest.mark.slow
async def test_google_genai_sdk_function_declarations_are_taken(
        embedded_tls: Address, cert: tuple[str, str]) -> None:
    """The SDK's own serialization of function declarations (Gemini's schema types) sets up a
    session that answers; models that take no tools (the embedded OCR) answer as without
    them. The whole call loop on a model that calls: tests/test_tools.py."""
    ctx = ssl.create_default_context(cafile=cert[0])
    client = genai.Client(api_key="gemini-key", http_options=types.HttpOptions(
        base_url=f"https://127.0.0.1:{embedded_tls.port}", async_client_args={"ssl": ctx}))
    declaration = types.FunctionDeclaration(
        name="get_weather", description="The forecast", parameters=types.Schema(
            type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)},
            required=["city"]))
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT],
                                     tools=[types.Tool(function_declarations=[declaration])])
    text = []
    async with client.aio.live.connect(model="ocr", config=config) as session:
        await session.send_realtime_input(video=types.Blob(
            data=jpeg_bytes("SUNNY", size=(640, 240)), mime_type="image/jpeg"))
        await session.send_client_content(turns=types.Content(
            role="user", parts=[types.Part(text="Weather?")]), turn_complete=True)
        async for message in session.receive():
            text.append(message.text or "")
    assert "SUNNY" in "".join(text)
