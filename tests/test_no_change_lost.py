"""No change lost in silence: live windows that find their model's queue full wait and go
again, and a window no model answered never becomes the scene gate's reference."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from agent.config import Config, GatingConfig, HandlerConfig, ModelConfig, ProfileConfig
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakePlugin, data_url, image_event, jpeg_bytes
from agent.uvicorn_server import running
from tests.helpers import Client

SESSIONS = 6


def crowded_runtime(max_queue: int) -> Runtime:
    """One slow model worker with a short queue (from the config, as an operator sets it), and
    a gated live handler that asks the model about every window it admits."""
    config = Config(
        models={"fake": ModelConfig(engine="fake", workers=1, max_queue=max_queue,
                                    options={"delay_s": 0.15})},
        profiles={"default": ProfileConfig(handlers=["echo"], live=True)},
        handlers={"echo": HandlerConfig(options={"via_model": True},
                                        gating=GatingConfig(enabled=True))})
    return Runtime.build(config, get_plugin_manager([FakePlugin()]))


async def static_scene(client: Client, seconds: int) -> list[dict[str, Any]]:
    """The same picture, four frames a second, on the media clock; then what came back until
    the first live answer (a session never answered times out)."""
    frame = data_url(jpeg_bytes("same"))
    for i in range(seconds * 4):
        await client.send(image_event(frame, timestamp=i * 0.25 + 0.01))
        await asyncio.sleep(0.02)
    await client.until("response.done", timeout=10)
    return client.seen


async def test_config_max_queue_refuses_a_question_on_the_wire() -> None:
    """``models.NAME.max_queue`` from the config reaches the scheduler: with 0 waiting
    places, a question behind a running one is refused with ``model_overloaded``."""
    async with running(crowded_runtime(max_queue=0)) as address:
        url = f"{address.ws}/v1/realtime?model=default"
        busy, refused = await Client.connect(url), await Client.connect(url)
        for c in (busy, refused):
            await c.update(live=False)
        await busy.send({"type": "response.create"})
        await busy.until("response.created")
        await refused.send({"type": "response.create"})
        error = (await refused.error())
        assert error["code"] == "model_overloaded" and "max_queue 0" in error["message"]
        await busy.close()
        await refused.close()


async def test_sessions_arriving_together_each_read_their_static_scene(
        caplog: pytest.LogCaptureFixture) -> None:
    """More live sessions than the model's queue holds start on a static scene at once: every
    one gets its answer, none gets ``model_overloaded``, and the refused windows were retried
    (a refused window that became the gate's reference would have silenced the session)."""
    caplog.set_level(logging.INFO, logger="agent.conversation")
    async with running(crowded_runtime(max_queue=1)) as address:
        url = f"{address.ws}/v1/realtime?model=default"
        clients = [await Client.connect(url) for _ in range(SESSIONS)]
        seen = await asyncio.gather(*(static_scene(c, seconds=2) for c in clients))
        for c in clients:
            await c.close()
    for events in seen:
        assert not [e for e in events if e["type"] == "error"], events
        done = [e for e in events if e["type"] == "response.done"]
        assert done and all(d["response"]["status"] == "completed" for d in done)
    closed = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    waited = sum(int(re.search(r"(\d+) waited for a full model queue", m).group(1))  # type: ignore[union-attr]
                 for m in closed)
    assert len(closed) == SESSIONS and waited > 0  # the queue did fill: the path was taken


async def test_a_lost_window_is_named_and_counted_in_the_next_live_response() -> None:
    """A live window whose model call fails: the client is told which window and which handler
    (an error event), and the next live response of that handler counts it in its metadata."""
    config = Config(
        models={"fake": ModelConfig(engine="fake", options={"fail_requests": 1})},
        profiles={"default": ProfileConfig(handlers=["echo"], live=True)},
        handlers={"echo": HandlerConfig(options={"via_model": True})})
    async with running(Runtime.build(config, get_plugin_manager([FakePlugin()]))) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        for i in range(3):
            await client.send(image_event(data_url(jpeg_bytes(str(i))), timestamp=i + 0.01))
        error = await client.error()
        done = (await client.until("response.done"))[-1]["response"]
        await client.close()
    assert error["code"] == "engine_error"
    assert "echo's live window 0-1000 ms" in error["message"], error["message"]
    assert done["status"] == "completed" and done["metadata"]["windows_lost"] == "1"
