"""What the docs promise, exercised where users meet it: session settings, environment switches
and the browser's way of sending an API key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import websockets

from agent import AUDIO_RATE, Handler, HandlerContext, LocalPool, ModelConfig, Question, hookimpl
from agent.media import Frame, Window
from agent.testing import fake_runtime
from agent.uvicorn_server import running
from tests.helpers import Client, texts


class HistoryCounter(Handler):
    """Asked: says how many turns of conversation it was given."""

    name = "historian"
    modality = "image"
    enabled_by_default = False

    async def answer(self, question: Question) -> AsyncIterator[str]:
        yield f"{len(question.history)} turns"


class Extras:
    @hookimpl
    def register_models(self, register: Any) -> None:
        register("fake2", ModelConfig(engine="fake", options={"tokens": 2}))

    @hookimpl
    def register_handlers(self, register: Any) -> None:
        register(HistoryCounter)


def user_item(text: str) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}


async def test_max_history_bounds_the_conversation_a_handler_sees() -> None:
    runtime = fake_runtime(handlers=("historian",), plugins=(Extras(),))
    runtime.config.server.max_history = 3
    async with running(runtime) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime")
        seen = []
        for i in range(4):
            await client.send(user_item(f"question {i}"))
            await client.send({"type": "response.create"})
            seen.append("".join(texts(await client.until("response.done"))))
        assert seen == ["0 turns", "2 turns", "3 turns", "3 turns"]
        await client.close()


async def test_session_update_gives_a_handler_another_model() -> None:
    runtime = fake_runtime(plugins=(Extras(),))
    async with running(runtime) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime")
        await client.send({"type": "response.create"})
        assert len(texts(await client.until("response.done"))) == 5  # fake: 5 tokens
        session = await client.update(models={"echo": "fake2"})
        assert session["streamagent"]["models"] == {"echo": "fake2"}
        await client.send({"type": "response.create"})
        assert len(texts(await client.until("response.done"))) == 2  # fake2: 2 tokens
        await client.send({"type": "session.update", "session": {
            "streamagent": {"models": {"echo": "gpt-9"}}}})
        error = await client.error()
        assert "no model named 'gpt-9'" in error["message"] and "fake2" in error["message"]
        await client.close()


async def test_the_api_key_as_a_websocket_subprotocol() -> None:
    """Browsers cannot set headers: they send the key as ``openai-insecure-api-key.KEY``."""
    runtime = fake_runtime()
    runtime.config.server.api_key = "sekret"
    async with running(runtime) as address:
        url = f"{address.ws}/v1/realtime"
        ws = await websockets.connect(url, subprotocols=[
            "realtime", "openai-insecure-api-key.sekret"])  # type: ignore[list-item]
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.close()
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(url, subprotocols=[
                "realtime", "openai-insecure-api-key.wrong"])  # type: ignore[list-item]
        assert info.value.response.status_code == 401


def run_plugins(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "plugins", "--json"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_streamagent_plugins_loads_only_the_named_entry_points() -> None:
    out = run_plugins(STREAMAGENT_PLUGINS="faces,speech")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert sorted(p["name"] for p in listed["plugins"]) == ["faces", "speech"]
    assert {"faces", "speech"} <= set(listed["handlers"])
    assert "text_in_view" not in listed["handlers"] and "ocr" not in listed["models"]


def test_streamagent_trace_plugins_prints_every_hook_call() -> None:
    out = run_plugins(STREAMAGENT_PLUGINS="faces", STREAMAGENT_TRACE_PLUGINS="1")
    assert out.returncode == 0, out.stderr
    for hook in ("register_engines", "register_models", "register_handlers"):
        assert hook in out.stderr, out.stderr
    assert "register_models" not in run_plugins(STREAMAGENT_PLUGINS="faces").stderr


async def test_a_session_chooses_a_lora_adapter_for_its_model_calls() -> None:
    runtime = fake_runtime(lora={"formal": "/adapters/formal", "terse": "/adapters/terse"})
    async with running(runtime) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime")
        session = await client.update(lora="terse")
        assert session["streamagent"]["lora"] == "terse"
        await client.send({"type": "response.create"})
        await client.until("response.done")
        await client.send({"type": "session.update", "session": {
            "streamagent": {"lora": "casual"}}})
        error = await client.error()
        assert error["param"] == "session.streamagent.lora"
        assert "adapters: ['formal', 'terse']" in error["message"]
        await client.update(lora="")
        await client.send({"type": "response.create"})
        await client.until("response.done")
        fake = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
        assert [r.options.get("lora") for r in fake.requests] == ["terse", None]
        await client.close()


def windows(n: int, audio_s: float = 0.0) -> list[Window]:
    out = []
    for i in range(n):
        audio = np.zeros(int(audio_s * AUDIO_RATE), np.float32)
        out.append(Window(i, float(i), float(i + 1), Frame("", i + 0.5), audio))
    return out


def test_video_every_s_and_window_s_pace_live_summaries() -> None:
    from plugins.hf.handlers import VideoHandler

    handler = VideoHandler(HandlerContext(LocalPool({}), "m", {"every_s": 2, "window_s": 4}))
    fired = [(w.start, w.end) for w in map(handler.feed, windows(8)) if w is not None]
    assert fired == [(0, 2), (0, 4), (2, 6), (4, 8)]


def test_listen_chunk_s_cuts_fixed_chunks_and_the_rest_at_commit() -> None:
    from plugins.hf.handlers import ListenHandler

    handler = ListenHandler(HandlerContext(LocalPool({}), "m", {"chunk_s": 2}))
    feed = windows(5, audio_s=1.0)
    feed[-1] = Window(4, 4.0, 5.0, None, feed[-1].audio, final=True)
    cut = [(u.start, u.end) for u in map(handler.feed, feed) if u is not None]
    assert cut == [(0, 2), (2, 4), (4, 5)]
