"""A client's own bound on its session's context: OpenAI Realtime ``session.truncation`` and
Gemini Live ``contextWindowCompression``, both as a narrower budget of the session's timelines
(never a wider one than the operator configured)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
import websockets

from agent.config import MemoryConfig
from agent.errors import InvalidRequest
from agent.protocols.context_window import compression, window
from agent.testing import jpeg_bytes
from agent.timeline import Memory, Window
from agent.uvicorn_server import Address
from tests.helpers import Client
from tests.test_memory import fake, live_seconds  # noqa: F401 (fake: test_memory's fixture)

FORGOTTEN = "(What came before"
GEMINI = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


def test_a_window_narrows_the_budget_and_never_widens_it() -> None:
    budget = MemoryConfig(max_tokens=1000, retention_ratio=0.5)
    assert Window().within(budget) == budget
    assert Window(max_tokens=400, keep_tokens=100).within(budget).model_dump() == {
        **budget.model_dump(), "max_tokens": 400, "retention_ratio": 0.25}
    assert Window(max_tokens=10**6, retention_ratio=0.8).within(budget).max_tokens == 1000
    memory = Memory(on=True, budgets={"m": budget})
    held = memory.timeline("m")
    assert held is not None
    memory.narrow(Window(max_tokens=200))
    assert held.budget.max_tokens == 200 and memory.timeline("other") is not None
    assert memory.timelines["other"].budget.max_tokens == 200  # the default budget, narrowed
    for t in range(3):  # past the narrowed bound, the held timeline cuts
        held.see(float(t), np.zeros((4, 4, 3), np.uint8), str(t))
    assert held.cuts > 0


def test_what_clients_send_is_read_or_refused_by_name() -> None:
    assert window("auto") == Window() and window(None) is None
    assert window({"type": "retention_ratio", "retention_ratio": 0.7,
                   "token_limits": {"post_instructions": 8000}}) == Window(8000, None, 0.7)
    for bad, param in [("disabled", "session.truncation"),
                       ({"type": "retention_ratio", "retention_ratio": 1.5},
                        "session.truncation.retention_ratio"),
                       ({"type": "retention_ratio", "retention_ratio": 0.5,
                         "token_limits": {"post_instructions": 3}},
                        "session.truncation.token_limits")]:
        with pytest.raises(InvalidRequest) as info:
            window(bad)
        assert info.value.param == param
    # Gemini's int64 counts arrive as strings from JSON clients
    assert compression({"triggerTokens": "4000", "slidingWindow": {"targetTokens": "1000"}}) == \
        Window(max_tokens=4000, keep_tokens=1000)
    assert compression({"slidingWindow": {}}) == Window(retention_ratio=0.5)  # Gemini's default
    for bad in [{}, {"triggerTokens": 500, "slidingWindow": {"targetTokens": 500}},
                {"triggerTokens": "many", "slidingWindow": {}}]:
        with pytest.raises(InvalidRequest):
            compression(bad)


async def test_realtime_truncation_cuts_the_timeline_sooner(
        fake: tuple[Address, Any]) -> None:  # noqa: F811 (the fixture imported above)
    address, engine = fake
    client = await Client.connect(address.realtime)
    truncation = {"type": "retention_ratio", "retention_ratio": 0.5,
                  "token_limits": {"post_instructions": 64}}
    await client.send({"type": "session.update", "session": {"truncation": truncation}})
    updated = (await client.until("session.updated"))[-1]["session"]
    assert updated["truncation"] == truncation
    await live_seconds(client, ["ONE", "TWO", "THREE", "FOUR"])
    assert engine.requests[-1].sequence[0].text.startswith(FORGOTTEN)
    await client.send({"type": "session.update", "session": {"truncation": "disabled"}})
    error = (await client.until("error"))[-1]["error"]
    assert error["param"] == "session.truncation" and "bounded" in error["message"]
    await client.send({"type": "session.update", "session": {"truncation": "auto"}})
    assert (await client.until("session.updated"))[-1]["session"]["truncation"] == "auto"
    await client.close()


async def _gemini_rounds(address: Address, setup: dict[str, Any], words: list[str]) -> None:
    async with websockets.connect(f"{address.ws}{GEMINI}") as ws:
        await ws.send(json.dumps({"setup": {"model": "models/default", **setup}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        for word in words:
            frame = base64.b64encode(jpeg_bytes(word)).decode()
            await ws.send(json.dumps({"realtimeInput": {"video": {
                "mimeType": "image/jpeg", "data": frame}}}))
            await ws.send(json.dumps({"clientContent": {"turns": [
                {"role": "user", "parts": [{"text": "What is written?"}]}],
                "turnComplete": True}}))
            while "turnComplete" not in json.loads(
                    await asyncio.wait_for(ws.recv(), 30)).get("serverContent", {}):
                pass


async def test_gemini_context_window_compression_cuts_the_timeline_sooner(
        fake: tuple[Address, Any]) -> None:  # noqa: F811 (the fixture imported above)
    address, engine = fake
    words = ["ONE", "TWO", "THREE", "FOUR"]
    await _gemini_rounds(address, {}, words)
    assert not engine.requests[-1].sequence[0].text.startswith(FORGOTTEN)
    await _gemini_rounds(address, {"contextWindowCompression": {
        "triggerTokens": "64", "slidingWindow": {"targetTokens": "32"}}}, words)
    assert engine.requests[-1].sequence[0].text.startswith(FORGOTTEN)
