"""Live memory at minute 1 and minute 5 side by side (issue 23): two sessions of one engine,
one holding the timeline of the stream's early seconds, the other of its late ones, their calls
alternating, so both lengths are measured on the same machine at the same time. (In one stream
minute 1 and minute 5 are minutes apart, and on a shared machine their latencies spread more
than they differ: benchmarks/memory.py.)

Each call is a live `describe` of the session's next second, rendered from its real timeline
(agent/timeline.py: every frame so far with its time, each exchange) and sent to the engine
(the server's part of a window, measured by benchmarks/memory.py, stays flat). Before its
calls, each session's timeline is filled with its earlier seconds and computed once.

    PYTHONPATH=. .venv/bin/python -m benchmarks.memory_paired [--real qwen2-vl-2b]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import MemoryConfig
from agent.engine import ModelRequest
from agent.parts import TextDelta, Usage
from agent.plugins import collect, get_plugin_manager
from agent.runtime import build_engines
from agent.timeline import Timeline
from benchmarks.docs import write_block
from benchmarks.memory import FAMILIES, Run, Second, at, checkpoint, model, row
from benchmarks.run import machine

PROMPT = "Describe what you see."
SAY = "A picture."
"""What each second before the measured calls is recorded as saying."""


def frame(t: int, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Second ``t``'s picture (noise, its own each second) and its content key."""
    image = np.random.default_rng(t).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return image, hashlib.sha1(image.tobytes()).hexdigest()


async def call(engine: Any, timeline: Timeline, session: str, t: int,
               size: tuple[int, int]) -> Second:
    """Second ``t`` of ``session``: its frame joins the timeline, the model describes it."""
    timeline.see(float(t), *frame(t, size))
    render = timeline.render(PROMPT)
    began, first, words, usage = time.perf_counter(), None, [], Usage()
    async for part in engine.stream(ModelRequest(sequence=render.entries, session=session)):
        if isinstance(part, TextDelta):
            first = first or time.perf_counter() - began
            words.append(part.text)
        elif isinstance(part, Usage):
            usage = part
    timeline.said(PROMPT, "".join(words))
    return Second(usage.prompt_tokens or 0, usage.cached_tokens or 0,
                  float("nan") if first is None else first)


async def pair(kind: str, source: Path, seconds: tuple[int, int], calls: int,
               size: tuple[int, int], **options: Any) -> tuple[Run, Run]:
    """``calls`` calls of each session, alternating, after each one's warm-up; ``options``:
    the model's, beside the benchmark's."""
    config = model(kind, source)
    config = config.model_copy(update={"handlers": [],
                                       "options": {**config.options, **options}})
    registry = collect(get_plugin_manager())
    engine = build_engines({"m": config}, registry.engines, registry.families)["m"]
    await engine.start()
    try:
        budget = MemoryConfig(max_frames=1000, max_tokens=10**6)
        timelines = {upto: Timeline(budget) for upto in seconds}
        for upto, timeline in timelines.items():
            for t in range(upto - 1):
                timeline.see(float(t), *frame(t, size))
                timeline.said(PROMPT, SAY)
            await call(engine, timeline, f"s{upto}", upto - 1, size)
        runs = {upto: Run() for upto in seconds}
        for i in range(calls):
            for upto, timeline in timelines.items():
                runs[upto].seconds.append(await call(engine, timeline, f"s{upto}", upto + i,
                                                     size))
        return runs[seconds[0]], runs[seconds[1]]
    finally:
        await engine.close()


async def main(real: str | None, engines: list[str], calls: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:  # a real checkpoint's weights: 8 GB
        return await _main(Path(tmp), real, engines, calls)


async def _main(tmp: Path, real: str | None, engines: list[str], calls: int) -> str:
    if real:
        from scripts.gpu_bench_models import build as build_real

        sources = {real: build_real(real, tmp / real, small=False, device="cpu")}
        seconds, size = (12, 84), (112, 84)  # its prompt then about 5x as long
    else:
        sources = {family: checkpoint(family, tmp) for family in FAMILIES}
        seconds, size = (20, 100), (320, 240)
    rows = []
    for kind in engines:
        for name, source in sources.items():
            # vLLM on a CPU: the engine's blocks of 32 tokens, and vLLM's own 128
            for block in (None, 128) if kind == "vllm" and real else (None,):
                options = {} if block is None else {"block_size": block}
                early, late = await pair(kind, source, seconds, calls, size, **options)
                label = name if block is None else f"{name}, blocks of {block}"
                rows.append(row(kind, label, "on", {"early": at(early, 1, calls),
                                                    "late": at(late, 1, calls)}))
                print(rows[-1], flush=True)
    what = (f"{real} (random weights, the real sizes, in bfloat16 as the real one ships; frames of 112x84)" if real else
            "the tiny checkpoints of the table above (frames of 320x240)")
    return f"""<!-- bench:memory-paired{'-real' if real else ''} -->
### Minute 1 and minute 5 side by side{', at full size' if real else ''}

Measured by `benchmarks/memory_paired.py{' --real ' + real if real else ''}` on \
{time.strftime('%Y-%m-%d')}, {machine()}: {what}; one session holding {seconds[0]} s of \
stream, one holding {seconds[1]} s, each call of one followed by a call of the other, medians \
of {calls - 1} calls each after the first (memory on; latency: from the call to its first text \
delta, at the engine).

| engine | checkpoint | memory | prompt tokens | computed tokens | cache hits | first delta (ms) | late / early: computed, latency |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
<!-- /bench:memory-paired{'-real' if real else ''} -->"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", metavar="MODEL", default=None,
                        help="a full-size random-weight checkpoint (qwen2-vl-2b) on this CPU")
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"])
    parser.add_argument("--calls", type=int, default=9)
    args = parser.parse_args()
    name = "memory-paired-real" if args.real else "memory-paired"
    write_block(name, asyncio.run(main(args.real, args.engines, args.calls)))
