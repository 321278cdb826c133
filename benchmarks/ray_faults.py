"""How soon a client hears that the Ray replica answering it is gone: the targets the Ray tests
used to hold (a killed replica's response fails within 1 s), measured here instead. The tests
keep only what holds on any machine: the death is told, well before the call's 60 s deadline.

Runs inside benchmarks/ray_bench.py's local Ray cluster (Serve started): a fake model deployed
as a Serve replica that answers slowly, a gateway over it, one realtime session asking; the
replica is killed after the first delta, and the time to that response's ``response.done``
(``failed``) at the client is one sample. Serve replaces the replica before the next round.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import websockets

from agent.config import Config, ProfileConfig
from agent.plugins import collect, get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakeEngine, FakePlugin, fake_model
from agent.uvicorn_server import running

TARGET_S = 1.0
"""What a quiet machine should do: the death is seen by the gateway at once."""


async def _until(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        event: dict[str, Any] = json.loads(await ws.recv())
        if event["type"] == kind:
            return event


async def _one_kill(address: str) -> float:
    import ray

    async with websockets.connect(address, max_size=None) as ws:
        await ws.send(json.dumps({"type": "response.create"}))
        await asyncio.wait_for(_until(ws, "response.output_text.delta"), 60)
        replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                       if "fragile" in a["name"] and "REPLICA" in a["name"])
        killed = time.perf_counter()
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]))
        done = await asyncio.wait_for(_until(ws, "response.done"), 60)
        heard = time.perf_counter() - killed
        assert done["response"]["status"] == "failed", done
        return heard


async def _serving(address: str) -> None:
    """Until the replaced replica answers a whole response."""
    for _ in range(120):
        async with websockets.connect(address, max_size=None) as ws:
            await ws.send(json.dumps({"type": "response.create"}))
            done = await asyncio.wait_for(_until(ws, "response.done"), 60)
        if done["response"]["status"] == "completed":
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the fragile replica did not come back")


async def replica_killed(rounds: int = 5) -> list[float]:
    """Seconds from killing the replica mid-answer to ``response.done`` at the client."""
    from ray import serve

    from agent.ray.pool import RayPool
    from agent.ray.replica import ModelServer

    app = serve.deployment(ModelServer, name="fragile", ray_actor_options={"num_cpus": 0},
                           health_check_period_s=1, health_check_timeout_s=5,
                           graceful_shutdown_timeout_s=1, graceful_shutdown_wait_loop_s=0.2)
    model = fake_model(tokens=40, delay_s=0.05).model_dump()
    serve.run(app.bind("fragile", model, FakeEngine), name="fragile",
              route_prefix="/models/fragile")
    config = Config(profiles={"default": ProfileConfig(handlers=["echo"],
                                                       models={"echo": "fragile"})})
    runtime = Runtime(config, collect(get_plugin_manager([FakePlugin()])), RayPool(["fragile"]))
    heard = []
    try:
        async with running(runtime) as address:
            for _ in range(rounds):
                await _serving(address.realtime)
                heard.append(await _one_kill(address.realtime))
    finally:
        serve.delete("fragile")
    return heard


def row(heard: list[float]) -> str:
    """The figure's table row for docs/performance.md."""
    xs = sorted(heard)
    return (f"| a replica killed mid-answer -> `response.done` (failed) at the client "
            f"(median / max, {len(xs)} kills) | {xs[len(xs) // 2] * 1000:.0f} / "
            f"{xs[-1] * 1000:.0f} ms | target under {TARGET_S * 1000:.0f} ms |")
