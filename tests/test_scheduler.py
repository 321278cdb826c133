"""The per-model scheduler: round-robin across sessions, a bounded queue, instant cancel."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from agent.errors import Overloaded
from agent.pool import LocalPool
from agent.scheduler import Scheduler
from agent.testing import FakeEngine, fake_model, fake_runtime
from agent.uvicorn_server import running
from tests.helpers import Client


async def test_sessions_are_served_round_robin() -> None:
    sched = Scheduler("m", workers=1, max_queue=10)
    served: list[str] = []
    release = asyncio.Event()

    async def job(key: str, label: str) -> None:
        async with sched.slot(key):
            served.append(label)
            if label == "a0":
                await release.wait()

    first = asyncio.create_task(job("a", "a0"))
    await asyncio.sleep(0)
    flood = [asyncio.create_task(job("a", f"a{i}")) for i in range(1, 4)]
    await asyncio.sleep(0)
    other = asyncio.create_task(job("b", "b1"))
    await asyncio.sleep(0)
    assert sched.waiting == 4 and sched.running == 1
    release.set()
    await asyncio.gather(first, *flood, other)
    assert served == ["a0", "a1", "b1", "a2", "a3"]  # b waits for one of a's, not all three
    assert sched.running == 0 and sched.waiting == 0


async def test_a_full_queue_refuses_at_once() -> None:
    sched = Scheduler("m", workers=1, max_queue=1)
    hold = asyncio.Event()

    async def job(key: str) -> None:
        async with sched.slot(key):
            await hold.wait()

    running_job = asyncio.create_task(job("a"))
    waiting_job = asyncio.create_task(job("b"))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="max_queue 1"):
        async with sched.slot("c"):
            pass
    assert sched.stats.refused == 1
    hold.set()
    await asyncio.gather(running_job, waiting_job)


async def test_a_cancelled_waiter_leaves_without_waiting_for_work_ahead() -> None:
    sched = Scheduler("m", workers=1, max_queue=4)
    hold = asyncio.Event()

    async def job(key: str) -> str:
        async with sched.slot(key):
            await hold.wait()
            return key

    busy = asyncio.create_task(job("a"))
    queued = asyncio.create_task(job("b"))
    await asyncio.sleep(0)
    queued.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await queued  # returns while "a" still holds the only worker
    assert not busy.done() and sched.waiting == 0 and sched.stats.cancelled_waiting == 1
    later = asyncio.create_task(job("c"))
    await asyncio.sleep(0)
    hold.set()
    assert await asyncio.gather(busy, later) == ["a", "c"]  # the freed place was not leaked


def fake_pool(**options: Any) -> tuple[LocalPool, FakeEngine]:
    workers = options.pop("workers", None)
    config = fake_model(**options).model_copy(update={"workers": workers})
    engine = FakeEngine("fake", config)
    return LocalPool({"fake": engine}), engine


async def test_local_pool_runs_workers_threads_at_once_and_cancels_queued_requests() -> None:
    from agent.engine import ModelRequest
    from agent.parts import text_only

    pool, engine = fake_pool(workers=2, tokens=200, delay_s=0.02)
    await pool.start()
    try:
        async def consume(session: str) -> int:
            return len([t async for t in text_only(pool.stream("fake",
                                                               ModelRequest(session=session)))])

        two = [asyncio.create_task(consume(s)) for s in ("a", "b")]
        for _ in range(500):  # both workers generate at the same time
            if engine.active == 2:
                break
            await asyncio.sleep(0.01)
        assert engine.active == 2
        third = asyncio.create_task(consume("c"))
        await asyncio.sleep(0.05)
        assert pool.schedulers["fake"].waiting == 1
        third.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await third
        assert engine.active == 2 and pool.schedulers["fake"].waiting == 0
        assert await asyncio.gather(*two) == [200, 200]
        assert len(engine.requests) == 2  # the cancelled request never reached the model
    finally:
        await pool.close()


async def test_a_request_stuck_past_its_limit_makes_the_model_unhealthy() -> None:
    from agent.engine import ModelRequest

    pool, engine = fake_pool(tokens=100, delay_s=0.05)
    engine.config = engine.config.model_copy(update={"stuck_after_s": 0.2})
    assert await pool.health() == {"fake": False}  # not loaded yet
    await pool.start()
    try:
        assert await pool.health() == {"fake": True}
        stream = pool.stream("fake", ModelRequest())
        await anext(stream)
        await asyncio.sleep(0.3)
        assert await pool.health() == {"fake": False}
        await stream.aclose()
        assert await pool.health() == {"fake": True}
    finally:
        await pool.close()
    assert await pool.health() == {"fake": False}  # closed


async def test_a_full_model_queue_is_an_error_event_and_the_sessions_go_on() -> None:
    runtime = fake_runtime(tokens=40, delay_s=0.02)
    fake = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
    fake.config = fake.config.model_copy(update={"max_queue": 0})
    runtime.pool.schedulers["fake"] = Scheduler("fake", 1, 0)  # type: ignore[attr-defined]
    async with running(runtime) as address:
        url = f"{address.ws}/v1/realtime?model=default"
        busy, refused = await Client.connect(url), await Client.connect(url)
        await busy.send({"type": "response.create"})
        await busy.until("response.output_text.delta")
        async with httpx.AsyncClient(base_url=address.http) as http:  # chat: 503, retry
            r = await http.post("/v1/chat/completions", json={
                "model": "fake", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_overloaded", r.text
        await refused.send({"type": "response.create"})
        got = await refused.until("response.done")
        error = next(e["error"] for e in got if e["type"] == "error")
        assert error["code"] == "model_overloaded" and "max_queue 0" in error["message"]
        assert got[-1]["response"]["status"] == "failed"
        assert (await busy.until("response.done"))[-1]["response"]["status"] == "completed"
        await refused.send({"type": "response.create"})  # the model is free again
        assert (await refused.until("response.done"))[-1]["response"]["status"] == "completed"
        await busy.close()
        await refused.close()
