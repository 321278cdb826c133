"""Live memory at a constant cost per second (issue 23): a live stream at 1 fps with a live
`describe` every second, through the realtime endpoint, with the session's timeline (memory
on) and prompted afresh each second (memory off), on tiny Qwen2.5-VL and Qwen3-VL checkpoints,
transformers and vLLM, in one run.

Per second of stream: prompt tokens, tokens computed (prompt minus cached), the cache hit rate
and window-to-first-delta latency, early in the stream and at its end (the context then 5x
longer). Media time runs faster than the clock: each frame goes as soon as the window before
it is answered, with its media timestamp.

    PYTHONPATH=. .venv/bin/python -m benchmarks.memory [--seconds 150] [--engines transformers vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from agent.config import (
    Config,
    GatingConfig,
    GenerationConfig,
    HandlerConfig,
    MemoryConfig,
    ModelConfig,
)
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import running
from benchmarks.docs import write_block
from benchmarks.run import machine

FAMILIES = ("qwen2.5-vl", "qwen3-vl")
TOKENS = 4
"""Answer tokens per window."""
CONTEXT = 32768
"""The checkpoints' context (the tiny builds say 4096): the timeline is not cut in the run."""
SAMPLE = 20
"""Windows each figure is the median of."""
TICK_S = 1.1
"""A window closes by the clock this long after a frame stamped at its start arrives."""


@dataclass
class Second:
    """One live window's response."""

    prompt: int = 0
    cached: int = 0
    latency_s: float = float("nan")

    @property
    def computed(self) -> int:
        return self.prompt - self.cached


@dataclass
class Run:
    seconds: list[Second] = field(default_factory=list)
    wall_s: float = 0.0


def checkpoint(family: str, tmp: Path) -> Path:
    """A tiny checkpoint of ``family`` whose context holds the whole run."""
    out = build(family, tmp / family.replace(".", "_"))
    path = out / "config.json"
    path.write_text(re.sub(r'("max_position_embeddings": )\d+', rf"\g<1>{CONTEXT}",
                           path.read_text()))
    return out


def model(engine: str, source: Path) -> ModelConfig:
    options = {"max_model_len": CONTEXT} if engine == "vllm" else {}
    return ModelConfig(engine=engine, source=str(source), handlers=["describe"], options=options,
                       memory=MemoryConfig(max_frames=1000, max_tokens=CONTEXT - 1000),
                       generation=GenerationConfig(max_new_tokens=TOKENS,
                                                   min_new_tokens=TOKENS))


@contextlib.asynccontextmanager
async def live(url: str, memory: bool, done: dict[int, asyncio.Future[dict[str, Any]]],
               first: dict[int, float]) -> AsyncIterator[Any]:
    """A live realtime session (its timeline ``memory`` on or off) whose live windows'
    ``response.done`` go into ``done`` and the times of their first text deltas into
    ``first``, both by the window's start second."""
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {
            "streamagent": {"live": True, "memory": memory}}}))
        task = asyncio.create_task(_receive(ws, done, first))
        try:
            yield ws
        finally:
            task.cancel()


async def _receive(ws: Any, done: dict[int, asyncio.Future[dict[str, Any]]],
                   first: dict[int, float]) -> None:
    loop = asyncio.get_running_loop()
    window_of: dict[str, int] = {}
    async for raw in ws:
        ev = json.loads(raw)
        if ev["type"] == "response.created":
            start = ev["response"]["metadata"].get("window_start_ms")
            if start is not None:
                window_of[ev["response"]["id"]] = int(start) // 1000
        elif ev["type"] == "response.output_text.delta":
            k = window_of.get(ev["response_id"])
            if k is not None:
                first.setdefault(k, time.perf_counter())
        elif ev["type"] == "response.done":
            k = window_of.get(ev["response"]["id"], -1)
            done.setdefault(k, loop.create_future()).set_result(ev["response"])


async def stream(url: str, seconds: int, memory: bool, size: tuple[int, int] = (320, 240)
                 ) -> Run:
    """``seconds`` windows, each a new picture of ``size``; every window's usage and first
    delta."""
    frames = ["data:image/jpeg;base64," +
              base64.b64encode(jpeg_bytes(f"W{i}", size=size, font_size=size[1] // 5)).decode()
              for i in range(seconds + 1)]
    sent: dict[int, float] = {}
    first: dict[int, float] = {}
    done: dict[int, asyncio.Future[dict[str, Any]]] = {}
    loop = asyncio.get_running_loop()
    async with live(url, memory, done, first) as ws:
        began = time.perf_counter()
        run = Run()
        for i in range(seconds + 1):
            sent[i] = time.perf_counter()
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{
                    "type": "input_image", "image_url": frames[i],
                    "streamagent": {"timestamp": float(i)}}]}}))
            if i:
                response = await asyncio.wait_for(done.setdefault(i - 1, loop.create_future()),
                                                  600)
                usage = response["usage"]
                closed = min(sent[i], sent[i - 1] + TICK_S)  # by this frame, or by the clock
                run.seconds.append(Second(usage["input_tokens"],
                                          usage["input_token_details"]["cached_tokens"],
                                          first.get(i - 1, float("nan")) - closed))
        run.wall_s = time.perf_counter() - began
    return run


async def measure(engine: str, family: str, source: Path, seconds: int,
                  size: tuple[int, int] = (320, 240), sample: int = SAMPLE) -> dict[str, Run]:
    config = Config(models={"m": model(engine, source)},  # every window is work: no gating
                    handlers={"describe": HandlerConfig(gating=GatingConfig(enabled=False))})
    runtime = Runtime.build(config, get_plugin_manager())
    out = {}
    async with running(runtime) as address:
        for memory in (True, False):
            out["on" if memory else "off"] = run = await stream(address.realtime, seconds,
                                                                memory, size)
            print(engine, family, "memory", "on" if memory else "off",
                  f"{run.wall_s:.0f} s", summary(run, seconds, sample), flush=True)
    return out


def at(run: Run, start: int, end: int) -> dict[str, float]:
    """Medians over the windows ``[start, end)`` of the stream."""
    part = run.seconds[start:end]
    prompt = statistics.median(s.prompt for s in part)
    computed = statistics.median(s.computed for s in part)
    hits = sum(s.cached for s in part) / max(1, sum(s.prompt for s in part))
    latency = statistics.median(s.latency_s for s in part)
    return {"prompt": prompt, "computed": computed, "hit": hits, "latency_ms": 1000 * latency}


def summary(run: Run, seconds: int, sample: int = SAMPLE) -> dict[str, dict[str, float]]:
    """Early (the ``sample`` windows around a fifth of the stream) and late (its last ones)."""
    early = max(0, seconds // 5 - sample // 2)
    return {"early": at(run, early, early + sample), "late": at(run, seconds - sample, seconds)}


def row(engine: str, family: str, memory: str, s: dict[str, dict[str, float]]) -> str:
    e, late = s["early"], s["late"]
    return (f"| {engine} | {family} | {memory} | {e['prompt']:.0f} → {late['prompt']:.0f} | "
            f"{e['computed']:.0f} → {late['computed']:.0f} | "
            f"{100 * e['hit']:.0f}% → {100 * late['hit']:.0f}% | "
            f"{e['latency_ms']:.0f} → {late['latency_ms']:.0f} | "
            f"{late['computed'] / max(1, e['computed']):.2f}x / "
            f"{late['latency_ms'] / e['latency_ms']:.2f}x |")


def section(rows: list[str], seconds: int, walls: list[str], growth: float) -> str:
    early = seconds // 5
    return f"""<!-- bench:memory -->
## Live memory: a session's timeline at a constant cost per second

Measured by `benchmarks/memory.py` (`make bench`) on {time.strftime('%Y-%m-%d')}, {machine()},
no GPU: a live stream at 1 fps with a live `describe` every second (a new picture each second,
{TOKENS} answer tokens), through the realtime endpoint, on tiny random-weight checkpoints of
the real architectures (2 layers, hidden 128; 12 vision tokens a frame), their context raised
to {CONTEXT} so the timeline is not cut. Memory on: each second's prompt is the session's
timeline (every frame so far with its time, the model's answers); memory off: the newest frame
alone, as before. Media time runs faster than the clock (the next frame goes when the window
before it is answered), so {seconds} s of stream stand for the issue's 5 minutes: figures are
medians over the {SAMPLE} windows around second {early} (→) and the last {SAMPLE}, when the
prompt is {growth:.1f}x longer. "Computed": prompt tokens minus those the engine served from its prefix cache
(vLLM's automatic prefix caching, in blocks of 32 tokens on a CPU; transformers: the session's KV
cache kept from its call before, plugins/hf/kv_reuse.py, matched token by token). Latency:
from the window's close to its first text delta.

| engine | checkpoint | memory | prompt tokens | computed tokens | cache hits | first delta (ms) | late / early: computed, latency |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Latency on this shared 2-core machine varies by up to 2x between runs of the same work
(compare the memory-off rows, whose work is constant): the computed tokens are the stable
measure. Where the memory-off rows hold flat, the growth of the memory-on latency is real. On
a tiny model it is work that grows with the prompt's length, not its computed tokens. On
transformers our input preparation is nearly flat now (only the new pictures are prepared and
only the new messages tokenized, plugins/hf/partial_inputs.py): what grows is `generate()` over
a longer cache, mostly its attention, each new token attending to every one before it
(transformers' own path also copied the whole cache at every step and repeated the keys of
grouped heads; plugins/hf/attention.py does neither: its table, below). vLLM gets the prompt as
token ids, only its new messages tokenized (agent/token_pieces.py: 0.12 ms, where tokenizing the
whole prompt took 3.4 ms at 100 frames), but at each call its input path still places every
picture's tokens and numbers the whole prompt's 3D positions, work of vLLM's that grows with
the prompt. Wall time per stream: {", ".join(walls)}.
<!-- /bench:memory -->"""


async def main(seconds: int, engines: list[str]) -> str:
    tmp = Path(tempfile.mkdtemp())
    sources = {family: checkpoint(family, tmp) for family in FAMILIES}
    rows, walls, growth = [], [], []
    for engine in engines:
        for family, source in sources.items():
            runs = await measure(engine, family, source, seconds)
            for memory, run in runs.items():
                s = summary(run, seconds)
                rows.append(row(engine, family, memory, s))
                walls.append(f"{engine} {family} memory {memory} {run.wall_s:.0f} s")
                if memory == "on":
                    growth.append(s["late"]["prompt"] / s["early"]["prompt"])
    return section(rows, seconds, walls, statistics.median(growth))


async def real(name: str, seconds: int, engines: list[str], sample: int = 5) -> str:
    """The same stream on a full-size random-weight checkpoint (scripts/gpu_bench_models.py)
    on this CPU, with small frames (112x84: 12 vision tokens each) so that a window takes
    seconds: the compute of a real model beside the same growth of context."""
    from scripts.gpu_bench_models import build as build_real

    tmp = Path(tempfile.mkdtemp())
    try:
        source = build_real(name, tmp / name, small=False, device="cpu")
        runs_of = {engine: await measure(engine, name, source, seconds, size=(112, 84),
                                         sample=sample) for engine in engines}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # its weights: 8 GB for qwen2-vl-2b
    rows, walls, growth = [], [], []
    for engine in engines:
        runs = runs_of[engine]
        for memory, run in runs.items():
            s = summary(run, seconds, sample)
            rows.append(row(engine, name, memory, s))
            walls.append(f"{engine} memory {memory} {run.wall_s:.0f} s")
            if memory == "on":
                growth.append(s["late"]["prompt"] / s["early"]["prompt"])
    walls_text, growth_x = ", ".join(walls), statistics.median(growth)
    return f"""<!-- bench:memory-real -->
### The same at full size: {name}, random weights, on this CPU

Measured by `benchmarks/memory.py --real {name}` on {time.strftime('%Y-%m-%d')}, {machine()}:
the stream above ({seconds} s, {TOKENS} answer tokens a window, frames of 112x84) on a checkpoint
with the real architecture and sizes of {name}, in bfloat16 as the real one ships
(scripts/gpu_bench_models.py; speed does not depend on the weights' values), on this CPU. Medians over the {sample} windows around
second {max(0, seconds // 5 - sample // 2) + sample // 2} and the last {sample}; the prompt
grows {growth_x:.1f}x.

| engine | checkpoint | memory | prompt tokens | computed tokens | cache hits | first delta (ms) | late / early: computed, latency |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The tokens computed stay flat: the caches serve the rest. What still grows is the work no cache
saves: each new token attends to every one before it (on transformers, plugins/hf/attention.py
keeps the rest from growing: its table, below). A cut (`memory.max_tokens`) bounds it: past the budget, the cost per second
stays between what the retention ratio keeps and the whole budget. Memory on computes more
each window than memory off: a window adds its frame's time and the last exchange to the
timeline, beside the frame (and vLLM caches whole blocks, of 32 tokens on a CPU). Wall time:
{walls_text}.
<!-- /bench:memory-real -->"""


def write(block: str, name: str = "memory") -> None:
    write_block(name, block)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=100)
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"])
    parser.add_argument("--real", metavar="MODEL", default=None,
                        help="a full-size random-weight checkpoint instead (qwen2-vl-2b), on "
                             "this CPU with small frames: seconds a window, minutes a run")
    args = parser.parse_args()
    if args.real:
        write(asyncio.run(real(args.real, args.seconds, args.engines)), "memory-real")
    else:
        write(asyncio.run(main(args.seconds, args.engines)))
