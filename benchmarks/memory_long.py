"""A long live stream at a bounded cost: memory per session over 30 minutes of media.

One live session at 1 fps (a new 320x240 picture each second) with a live `describe` every
second and the session's timeline on, through the realtime endpoint, on a tiny Qwen2.5-VL
(transformers, its session KV cache on) with the default budget (``models.NAME.memory``:
128 frames, 16384 tokens, a cut keeps half). Media time runs faster than the clock (the next
frame goes when the window before it is answered), so 30 minutes of stream take a few minutes.

Every 5 minutes of media: the process's resident memory, what the session's timeline holds
(frames, approximate tokens, cuts so far), the bytes of the model's session caches, and the
last window's prompt and cached tokens. The bound: the timeline's frames (each kept decoded)
and the session cache's `session_cache_mb`.

    PYTHONPATH=. .venv/bin/python -m benchmarks.memory_long [--minutes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.config import Config, GatingConfig, HandlerConfig, MemoryConfig
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import jpeg_bytes
from agent.timeline import Timeline
from agent.uvicorn_server import running
from benchmarks.docs import write_block
from benchmarks.memory import checkpoint, live, model
from benchmarks.run import machine

SIZE = (320, 240)
EVERY_S = 300
"""A row every this many seconds of media."""


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def held() -> dict[str, float]:
    """What the (one) session's timeline holds now."""
    timelines = [o for o in gc.get_objects() if isinstance(o, Timeline)]
    t = timelines[0]
    return {"frames": t.media, "tokens": t.tokens, "cuts": t.cuts}


async def stream(url: str, seconds: int, runtime: Runtime) -> list[dict[str, Any]]:
    pictures = [base64.b64encode(jpeg_bytes(f"W{i}", size=SIZE)).decode() for i in range(97)]
    engine: Any = runtime.pool.engines["m"]  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = []
    done: dict[int, asyncio.Future[dict[str, Any]]] = {}
    loop = asyncio.get_running_loop()
    async with live(url, True, done, {}) as ws:
        began = time.perf_counter()
        for i in range(seconds + 1):
            # 97 pictures in turn, each with its own text: no two neighbours alike (the gate
            # is off anyway), and the timeline holds each as a new frame
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{
                    "type": "input_image", "image_url": "data:image/jpeg;base64,"
                    + pictures[i % len(pictures)], "streamagent": {"timestamp": float(i)}}]}}))
            if i == 0:
                continue
            response = await asyncio.wait_for(done.setdefault(i - 1, loop.create_future()), 600)
            if i % EVERY_S == 0 or i == 1:
                usage = response["usage"]
                row = {"media_s": i, "wall_s": time.perf_counter() - began, "rss_mb": rss_mb(),
                       "cache_mb": engine.caches.size / 2**20, "prompt": usage["input_tokens"],
                       "cached": usage["input_token_details"]["cached_tokens"], **held()}
                rows.append(row)
                print(row, flush=True)
    return rows


async def main(minutes: int) -> str:
    source = checkpoint("qwen2.5-vl", Path(tempfile.mkdtemp()))
    config = Config(models={"m": model("transformers", source).model_copy(
                        update={"memory": MemoryConfig()})},
                    handlers={"describe": HandlerConfig(gating=GatingConfig(enabled=False))})
    runtime = Runtime.build(config, get_plugin_manager())
    async with running(runtime) as address:
        rows = await stream(address.realtime, minutes * 60, runtime)
    return section(rows, minutes)


def section(rows: list[dict[str, Any]], minutes: int) -> str:
    table = "\n".join(
        f"| {r['media_s'] // 60} min | {r['wall_s']:.0f} s | {r['rss_mb']:.0f} | "
        f"{r['frames']} | {r['tokens']} | {r['cuts']} | {r['cache_mb']:.1f} | "
        f"{r['prompt']} / {r['cached']} |" for r in rows)
    budget = MemoryConfig()
    bound = budget.max_frames * SIZE[0] * SIZE[1] * 3 / 2**20
    return f"""<!-- bench:memory-long -->
## A long live stream: memory per session stays bounded

Measured by `benchmarks/memory_long.py` (`make bench`) on {time.strftime('%Y-%m-%d')},
{machine()}: one live session, {minutes} minutes of media at 1 fps (a new {SIZE[0]}x{SIZE[1]}
picture each second, a live `describe` each second, the session's timeline on), through the
realtime endpoint, on a tiny Qwen2.5-VL (transformers, its session KV cache on) with the
default budget: {budget.max_frames} frames, {budget.max_tokens} tokens, a cut keeps
{budget.retention_ratio:g} of both. Media time runs faster than the clock. The timeline's
frames are bounded by {budget.max_frames} decoded pictures ({bound:.0f} MB at this size) and
the session caches by `session_cache_mb` (512 MB for all sessions of the model).

| media | wall | RSS (MB) | frames held | tokens held (approx.) | cuts | session caches (MB) | last window: prompt / cached tokens |
|---|---|---|---|---|---|---|---|
{table}

The process grows while the first prompts reach the budget (the processor's and the model's
working memory for a prompt of {budget.max_frames} pictures, beside the decoded frames), then
levels off: {rows[2]['rss_mb'] - rows[1]['rss_mb']:+.0f} MB from minute {rows[1]['media_s'] // 60}
to minute {rows[2]['media_s'] // 60}, {rows[-1]['rss_mb'] - rows[2]['rss_mb']:+.0f} MB from
there to minute {rows[-1]['media_s'] // 60}. The timeline is cut about every
{rows[-1]['media_s'] / max(1, rows[-1]['cuts']):.0f} s of media and never holds more than its
{budget.max_frames} frames.
<!-- /bench:memory-long -->"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=30)
    args = parser.parse_args()
    write_block("memory-long", asyncio.run(main(args.minutes)))
