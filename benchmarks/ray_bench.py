"""Ray pool vs in-process pool, measured in one run on a local Ray cluster started here.

1. Per-call overhead: the time to a one-token answer from the fake engine through each pool.
2. Window close -> first delta at the client, with a live handler that calls the model once.
3. Sessions held by one gateway process (open websockets, and its memory per session).
4. The hop itself: bytes per video window (eight 720p frames) raw vs packed, the time to the
   first delta for such a window through each pool, and streaming items per 400-token answer
   with and without coalescing.
5. A replica killed mid-answer: how soon the client hears (benchmarks/ray_faults.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

from agent.config import Config, HandlerConfig, ProfileConfig, ServerConfig
from agent.engine import ModelRequest
from agent.plugins import collect, get_plugin_manager
from agent.pool import LocalPool, Pool
from agent.runtime import Runtime, build_engines
from agent.testing import FakeEngine, FakePlugin
from agent.uvicorn_server import running
from benchmarks.docs import write_block
from benchmarks.ray_affinity import hit_rates, rows
from benchmarks.ray_faults import replica_killed, row
from benchmarks.run import ROOT, camera_frames, machine, stream

CALLS = 200
WINDOW_CALLS = 20


class BudgetFake(FakeEngine):
    """The fake engine with a vision model's pixel budget, downscaling what exceeds it before
    answering, as the transformers and vLLM engines do."""

    max_pixels = 640 * 480

    def generate(self, request: ModelRequest, cancelled: Any) -> Any:
        from agent.ray.hop import fit

        for image in (*request.images, *request.video):
            fit(image, self.max_pixels)
        return super().generate(request, cancelled)


def video_window(n: int = 8) -> tuple[Any, ...]:
    """Camera-like 1280x720 RGB frames (gradients, noise)."""
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:720, 0:1280]
    base = np.stack([x % 256, (y * 2) % 256, (x + y) % 256], -1)
    return tuple(np.clip(base + i + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
                 for i in range(n))


async def first_delta(pool: Pool, model: str, request: ModelRequest) -> list[float]:
    out = []
    for _ in range(WINDOW_CALLS):
        t0 = time.perf_counter()
        async for _text in pool.stream(model, request):
            out.append(time.perf_counter() - t0)
            break
    return out


async def long_answer(pool: Pool, model: str) -> tuple[int, float]:
    """Streaming items and seconds for a 400-token answer."""
    t0, items = time.perf_counter(), 0
    async for _text in pool.stream(model, ModelRequest(options={"tokens": 400, "max_new_tokens": 400})):
        items += 1
    return items, time.perf_counter() - t0


async def hop(registry: Any) -> dict[str, Any]:
    import pickle

    from agent.ray.hop import pack
    from agent.ray.pool import RayPool

    window = ModelRequest(prompt="what happens?", video=video_window(), options={"tokens": 1})
    out: dict[str, Any] = {
        "bytes_raw": len(pickle.dumps(window)),
        "bytes_jpeg": len(pickle.dumps(pack(window, None, 90))),
        "bytes_budget": len(pickle.dumps(pack(window, 640 * 480, 90))),
    }
    local = LocalPool({"budget": BudgetFake("budget", registry.models["fake"])})
    await local.start()
    await first_delta(local, "budget", window)
    out["window_local"] = ms(await first_delta(local, "budget", window))
    await local.close()
    for name, quality in (("window_ray_raw", 0), ("window_ray_packed", 90)):
        pool = RayPool(["budget"], jpeg_quality=quality)
        await first_delta(pool, "budget", window)
        out[name] = ms(await first_delta(pool, "budget", window))
        await pool.close()
    pool = RayPool(["fake", "fake_each"])
    for model in ("fake", "fake_each"):
        await long_answer(pool, model)
        out[f"answer_{model}"] = await long_answer(pool, model)
    await pool.close()
    return out


async def per_call(pool: Pool) -> list[float]:
    out = []
    for _ in range(CALLS):
        t0 = time.perf_counter()
        async for _text in pool.stream("fake", ModelRequest(options={"tokens": 1})):
            out.append(time.perf_counter() - t0)
    return out


def runtime(pool: Pool) -> Runtime:
    config = Config(server=ServerConfig(max_frames_per_s=10_000, max_sessions=5000),
                    handlers={"echo": HandlerConfig(options={"via_model": True})},
                    profiles={"default": ProfileConfig(handlers=["echo"], live=True)})
    return Runtime(config, collect(get_plugin_manager([FakePlugin()])), pool)


async def window_latency(pool: Pool, frames: list[str]) -> list[float]:
    async with running(runtime(pool)) as address:
        return await stream(address.realtime, frames, 20)


async def sessions_held(pool: Pool, count: int) -> dict[str, float]:
    rss = lambda: int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())  # noqa: E731
                      .group(1)) / 1024  # type: ignore[union-attr]
    async with running(runtime(pool)) as address:
        before = rss()
        sockets = []
        for _ in range(count):
            ws = await websockets.connect(address.realtime, max_size=None)
            assert json.loads(await ws.recv())["type"] == "session.created"
            sockets.append(ws)
        after = rss()
        for ws in sockets:
            await ws.close()
    return {"sessions": count, "mb_per_session": (after - before) / count}


def ms(xs: list[float]) -> tuple[float, float]:
    xs = sorted(1000 * x for x in xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(0.99 * len(xs)))]


async def main() -> dict[str, Any]:
    import ray
    from ray import serve

    from agent.ray.pool import RayPool
    from agent.ray.replica import ModelServer

    home = Path(tempfile.mkdtemp())
    (home / "ray_bootstrap_config.yaml").write_text("{}")
    os.environ.update({"HOME": str(home), "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0"})
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    serve.start(http_options={"host": "127.0.0.1", "port": 0},
                logging_config={"enable_access_log": False})
    for name, cls, interval in (("fake", FakeEngine, 0.03), ("fake_each", FakeEngine, 0.0),
                                ("budget", BudgetFake, 0.03)):
        app = serve.deployment(ModelServer, name=name, ray_actor_options={"num_cpus": 0})
        serve.run(app.bind(name, {"engine": "fake"}, cls, 600, None, interval), name=name,
                  route_prefix=f"/models/{name}")
    registry = collect(get_plugin_manager([FakePlugin()]))

    def local() -> LocalPool:  # `running` starts and closes its pool: a fresh one each time
        return LocalPool(build_engines({"fake": registry.models["fake"]}, registry.engines))

    frames = camera_frames(5)
    results: dict[str, Any] = {}
    try:
        for name, make in (("local", local), ("ray", lambda: RayPool(["fake"]))):
            pool = make()
            await pool.start()
            await per_call(pool)  # warm up
            results[f"call_{name}"] = ms(await per_call(pool))
            await pool.close()
            results[f"window_{name}"] = ms(await window_latency(make(), frames))
        results["held"] = await sessions_held(local(), 500)
        results["hop"] = await hop(registry)
        results["killed"] = await replica_killed()
        results["affinity"] = await hit_rates()
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def section(r: dict[str, Any]) -> str:
    (cl, cl99), (cr, cr99) = r["call_local"], r["call_ray"]
    (wl, wl99), (wr, wr99) = r["window_local"], r["window_ray"]
    held = r["held"]
    h = r["hop"]
    (hl, hl99), (hr, hr99), (hp, hp99) = h["window_local"], h["window_ray_raw"], \
        h["window_ray_packed"]
    (items, secs), (items0, secs0) = h["answer_fake"], h["answer_fake_each"]
    return f"""<!-- bench:ray -->
## Ray pool vs in-process pool

Measured by `make bench` on {time.strftime('%Y-%m-%d')}, {machine()}: a local Ray cluster
(ray 2.x, one replica of the fake engine) and the gateway in the bench process.

| figure | in-process | Ray pool | ratio |
|---|---|---|---|
| per call, time to a one-token answer (p50 / p99, {CALLS} calls) | {cl:.2f} / {cl99:.2f} ms | {cr:.2f} / {cr99:.2f} ms | **{cr / cl:.1f}x** |
| window close -> first delta at the client, live handler calling the model once (p50 / p99) | {wl:.1f} / {wl99:.1f} ms | {wr:.1f} / {wr99:.1f} ms | **{wr / wl:.1f}x** |

One gateway process held {held['sessions']} open realtime sessions at
{held['mb_per_session'] * 1024:.0f} KB each (idle sessions: a socket, a sampler, a ticker).
The Ray figures include the handle call and the streaming hop to the replica; they are the
price of moving models off the gateway machine, paid once per response, not per frame.

### The hop: pictures and streamed text

A video window of eight camera-like 1280x720 frames sent to a model whose pixel budget is
640x480 (`max_pixels`, as the transformers and vLLM engines have), one-token answer:

| what crosses to the replica | bytes per window |
|---|---|
| raw RGB (`jpeg_quality: 0`) | {h['bytes_raw'] / 1e6:.1f} MB |
| JPEG (quality 90) at full size | {h['bytes_jpeg'] / 1e6:.2f} MB |
| JPEG (quality 90) at the model's budget (the default) | {h['bytes_budget'] / 1e6:.2f} MB (**{h['bytes_raw'] / h['bytes_budget']:.0f}x** less than raw) |

| time to the first delta for that window (p50 / p99, {WINDOW_CALLS} calls) | ms | vs in-process |
|---|---|---|
| in-process pool | {hl:.1f} / {hl99:.1f} | 1.0x |
| Ray pool, raw pixels | {hr:.1f} / {hr99:.1f} | {hr / hl:.1f}x |
| Ray pool, packed at the budget (the default) | {hp:.1f} / {hp99:.1f} | {hp / hl:.1f}x |

The engine downscales what exceeds its budget (bicubic, as the transformers and vLLM engines
do): in-process and with raw pixels that happens in the engine; packed, the gateway does it
(a worker thread) and JPEG-encodes, the replica decodes, and the engine has nothing left to
downscale. On one machine the hop's bytes are cheap (loopback); across a network, 22 MB per
window is ~180 ms at 1 Gbit/s.

A 400-token answer from a fake engine that produces tokens as fast as it can: {items0} Ray
streaming items in {secs0 * 1000:.0f} ms with every delta its own item
(`stream_interval_s: 0`), {items} items in {secs * 1000:.0f} ms coalesced every 30 ms (the
default; the first delta is never held back).

### A replica lost

| figure | measured | |
|---|---|---|
{row(r["killed"])}

Serve's router learns of the dead actor at once; the gateway's call fails with `engine_error`
and the session stays open (tests/test_ray.py checks only that it is told, within 10 s). A lost
node needs a multi-node cluster: `benchmarks/node_loss.py` measures it ("A lost node" below).

### Session affinity and the model's caches

Each live session's prompt extends its last one (its timeline), so the replica that served a
session holds its cache. Four sessions, 12 live windows each, at once, a new picture every
window (`benchmarks/ray_affinity.py`):

| figure | measured | |
|---|---|---|
{rows(r["affinity"])}

Without affinity a call lands on either replica, and the other one holds an older cache of the
session (a shorter prefix) or none; the second window of a session can reuse about half its
prompt at best, so the rate over 11 windows stays under 100% either way.
<!-- /bench:ray -->"""


if __name__ == "__main__":
    res = asyncio.run(main())
    print(res)
    block = section(res)
    write_block("ray", block)
