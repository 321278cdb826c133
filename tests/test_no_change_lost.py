"""No change lost in silence: live windows that find their model's queue full wait and go
again, and a window no model answered never becomes the scene gate's reference."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from agent.config import Config, GatingConfig, HandlerConfig, ModelConfig, ProfileConfig
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakePlugin, data_url, image_event, jpeg_bytes
from agent.uvicorn_server import running
from tests.helpers import Client

SESSIONS = 64


def crowded_runtime(max_queue: int, delay_s: float = 0.02) -> Runtime:
    """One slow model worker with a short queue (from the config, as an operator sets it), and
    a gated live handler that asks the model about every window it admits."""
    config = Config(
        models={"fake": ModelConfig(engine="fake", workers=1, max_queue=max_queue,
                                    options={"delay_s": delay_s})},
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
    async with running(crowded_runtime(max_queue=0, delay_s=0.3)) as address:
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


async def test_sessions_arriving_together_each_read_their_static_scene() -> None:
    """More live sessions than the model's queue holds start on a static scene at once: every
    one gets its answer and none gets ``model_overloaded`` (their windows waited past
    ``max_queue``, which still refuses questions)."""
    runtime = crowded_runtime(max_queue=1)
    async with running(runtime) as address:
        url = f"{address.ws}/v1/realtime?model=default"
        clients = [await Client.connect(url) for _ in range(SESSIONS)]
        seen = await asyncio.gather(*(static_scene(c, seconds=2) for c in clients))
        for c in clients:
            await c.close()
    for events in seen:
        assert not [e for e in events if e["type"] == "error"], events
        done = [e for e in events if e["type"] == "response.done"]
        assert done and all(d["response"]["status"] == "completed" for d in done)
    stats = runtime.pool.schedulers["fake"].stats  # type: ignore[attr-defined]
    assert stats.patient_past_limit > 0 and stats.refused == 0  # the queue did fill


async def test_a_deferred_window_goes_again_and_only_an_answer_moves_the_gate() -> None:
    """Whatever refuses a live window's call (a pool that will not wait), the window goes
    back to its handler's slot and tries again, and the gate's reference moves only when a
    model answered."""
    from agent.live import LiveMedia
    from agent.media import Frame

    config = Config(profiles={"default": ProfileConfig(handlers=["echo"], live=True)},
                    handlers={"echo": HandlerConfig(gating=GatingConfig(enabled=True))})
    runtime = Runtime.build(config, get_plugin_manager([FakePlugin()]))
    endings = ["deferred", "deferred", "completed"]
    tried: list[Any] = []

    async def on_work(handler: Any, work: Any) -> str:
        tried.append(work)
        return endings.pop(0) if endings else "completed"

    media = LiveMedia(runtime, "s", on_work, profile=runtime.profile("default"))
    media.set_handlers(["echo"])
    slot = media.slots["echo"]
    assert slot.gate is not None
    frame = Frame(data_url(jpeg_bytes("same")).split(",", 1)[1], 0.5)
    from agent.media import Window

    slot.mailbox.put(Window(0, 0.0, 1.0, frame))
    for _ in range(100):
        if len(tried) == 3:
            break
        await asyncio.sleep(0.05)
    assert slot.gate.reference is not None and len(tried) == 3 and media.deferred == 2
    slot.mailbox.put(Window(1, 1.0, 2.0, frame))  # the same scene, now answered: skipped
    await asyncio.sleep(0.2)
    await media.close()
    assert len(tried) == 3 and media.windows_skipped == 1


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


async def test_a_patient_request_waits_past_max_queue_and_questions_keep_their_places() -> None:
    """Live windows' calls wait whatever the queue holds and do not take a question's place:
    with one worker busy and ``max_queue`` 1, two patient waiters still leave room for one
    question, and the next question is refused."""
    from agent.errors import Overloaded
    from agent.scheduler import Scheduler

    sched = Scheduler("m", workers=1, max_queue=1)
    order: list[str] = []
    release = asyncio.Event()

    async def call(key: str, patient: bool) -> None:
        async with sched.slot(key, patient=patient):
            order.append(key)
            await release.wait()

    tasks = [asyncio.create_task(call("busy", False))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(call(k, True)) for k in ("live1", "live2")]
    tasks.append(asyncio.create_task(call("question", False)))
    await asyncio.sleep(0.01)
    assert sched.waiting == 3
    with pytest.raises(Overloaded, match="max_queue 1"):
        await call("second question", False)
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["busy", "live1", "live2", "question"]


async def test_a_busy_live_handler_answers_the_newest_window_and_says_what_it_let_go() -> None:
    """Latest wins, over the wire: while the handler answers window 0, windows 1-4 close; it
    answers the newest next (never a backlog), and each response's ``windows_superseded``
    counts those it let go. A first-in-first-out mailbox answers 1, 2, 3 instead."""
    config = Config(
        models={"fake": ModelConfig(engine="fake", options={"delay_s": 2.0})},
        profiles={"default": ProfileConfig(handlers=["echo"], live=True)},
        handlers={"echo": HandlerConfig(options={"via_model": True})})
    runtime = Runtime.build(config, get_plugin_manager([FakePlugin()]))
    async with running(runtime) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        frame = data_url(jpeg_bytes("x"))
        await client.send(image_event(frame, timestamp=0.0))
        await client.send(image_event(frame, timestamp=1.0))  # window 0 closes: busy 2 s
        for second in (2.0, 3.0, 4.0, 5.0):  # windows 1-4 close while it is busy
            await client.send(image_event(frame, timestamp=second))
        answered = []  # (window start, superseded so far), until the session is quiet
        with contextlib.suppress(TimeoutError):
            while True:
                meta = (await client.until("response.done", timeout=3))[-1]["response"][
                    "metadata"]
                answered.append((int(meta["window_start_ms"]) // 1000,
                                 int(meta["windows_superseded"])))
        # window 0, then the newest closed window (4, or 5 once the clock closed it too); the
        # count says how many were let go in between; FIFO would answer 0, 1, 2, ...
        assert answered[0] == (0, 0) and answered[1][0] in (4, 5), answered
        assert all(superseded == window - i for i, (window, superseded) in enumerate(answered))
        await client.close()
