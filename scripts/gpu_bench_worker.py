"""One engine on one checkpoint, for gpu_bench.py: prints ``RESULT {json}`` as its last line.

    python -m scripts.gpu_bench_worker ENGINE MODEL SOURCE [--device cuda] [--small]
        [--deadline-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from agent import TextDelta, Timeline, Usage, content_key
from agent.config import GatingConfig, GenerationConfig, MemoryConfig, ModelConfig
from agent.engine import Engine, ModelRequest
from agent.gating import SceneGate, Thumbnails
from agent.handler import Mailbox
from agent.media import Frame, Window
from scripts.gpu_bench_models import REAL

PROMPT = "Describe what you see in one short sentence."
SIDE = 448
FRESH_S, MAX_DROPPED = 1.5, 0.05
CHANGE_EVERY_S = 10


def scene(seed: int) -> np.ndarray:
    """A 448x448 picture: smooth colour fields and a label, different for every seed."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8))
    img = small.resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    ImageDraw.Draw(img).text((40, 200), f"scene {seed}", fill="white")
    return np.asarray(img).astype(np.int16)


def jpeg(base: np.ndarray, rng: np.random.Generator) -> Frame:
    """``base`` with fresh camera noise, as a JPEG frame (never byte-identical to another)."""
    noisy = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=85)
    return Frame(base64.b64encode(buf.getvalue()).decode(), 0.0)


async def one(engine: Engine, image: np.ndarray, t0: float) -> tuple[float, float, int]:
    """Stream one response; (first delta s, last delta s, tokens) after ``t0``."""
    before = getattr(engine, "tokens_generated", 0)
    first = last = None
    async with contextlib.aclosing(engine.stream(ModelRequest(PROMPT, images=(image,)))) as s:
        async for _ in s:
            last = time.monotonic() - t0
            first = last if first is None else first
    tokens = getattr(engine, "tokens_generated", 0) - before
    return (first if first is not None else float("nan"),
            last if last is not None else float("nan"), tokens)


async def ttft(engine: Engine, n: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    firsts, rates = [], []
    for i in range(n + 1):  # the first call warms up
        frame = jpeg(scene(1000 + i), rng)
        image = await asyncio.to_thread(frame.image)
        first, last, tokens = await one(engine, image, time.monotonic())
        if i:
            firsts.append(first)
            if tokens > 1 and last > first:
                rates.append((tokens - 1) / (last - first))
    firsts.sort()
    return {"ttft_p50_ms": 1000 * statistics.median(firsts),
            "ttft_p95_ms": 1000 * firsts[min(len(firsts) - 1, int(0.95 * len(firsts)))],
            "tokens_per_s": statistics.median(rates) if rates else float("nan")}


async def remembered(engine: Engine, windows: int, memory: bool) -> dict[str, float]:
    """One live session, a new picture every window (issue 23's measurement at full size):
    with ``memory`` each prompt is the session's timeline (every frame so far with its time,
    the answers), as the server renders it; without, the newest frame alone. The prompt
    tokens, those computed (not served from a cache) and the time to the first delta, as
    medians over windows 1-5 (early) and the last 5 (late)."""
    timeline = Timeline(MemoryConfig(max_frames=windows + 1, max_tokens=10**7))
    rng = np.random.default_rng(7)
    rows: list[tuple[int, int, float]] = []
    for k in range(windows):
        image = np.array(await asyncio.to_thread(jpeg(scene(5000 + k), rng).image))
        if memory:
            timeline.see(float(k), image, content_key(image))
            render = timeline.render(PROMPT)
            request = ModelRequest(sequence=render.entries, session="remembered")
            parts = timeline.exchange(render, PROMPT, engine.stream(request))
        else:
            parts = engine.stream(ModelRequest(PROMPT, images=(image,), session="fresh"))
        t0, first, usage = time.monotonic(), None, Usage()
        async with contextlib.aclosing(parts) as stream:
            async for part in stream:
                if isinstance(part, TextDelta) and first is None:
                    first = time.monotonic() - t0
                elif isinstance(part, Usage):
                    usage = part
        prompt = usage.prompt_tokens or 0
        rows.append((prompt, prompt - (usage.cached_tokens or 0),
                     float("nan") if first is None else first))
    out: dict[str, float] = {}
    for name, part in (("early", rows[1:6]), ("late", rows[-5:])):
        out[f"prompt_{name}"] = statistics.median(r[0] for r in part)
        out[f"computed_{name}"] = statistics.median(r[1] for r in part)
        out[f"ttft_{name}_ms"] = 1000 * statistics.median(r[2] for r in part)
    return out


@dataclass
class Load:
    fresh: list[float] = field(default_factory=list)
    work: int = 0
    skipped: int = 0
    dropped: int = 0


async def session(engine: Engine, i: int, seconds: int, gating: bool, load: Load,
                  change_every: int, spread_s: float) -> None:
    """A live 1 fps session: a window closes every second; latest-wins, optional gate; the
    scene changes every ``change_every`` seconds; sessions start ``spread_s`` apart at most."""
    rng = np.random.default_rng(i)
    bases = {k: scene(i * 100 + k) for k in range(seconds // change_every + 2)}
    offset = int(rng.integers(0, change_every))
    gate = SceneGate(GatingConfig(), Thumbnails()) if gating else None
    if gate is not None:  # a session already running: its handler has seen the scene
        gate.admit(Window(-1, -1, 0, jpeg(bases[offset // change_every], rng)))
    box: Mailbox[tuple[float, Frame]] = Mailbox()
    answered = asyncio.Event()  # set while nothing waits or runs
    answered.set()

    async def worker() -> None:
        while True:
            closed, frame = await box.get()
            image = await asyncio.to_thread(frame.image)
            first, _, _ = await one(engine, image, closed)
            load.fresh.append(first)
            if not len(box):
                answered.set()

    task = asyncio.create_task(worker())
    start = time.monotonic() + spread_s * float(rng.random()) - 1
    try:
        for k in range(seconds):
            await asyncio.sleep(max(0.0, start + k + 1 - time.monotonic()))
            closed = time.monotonic()
            base = bases[(k + offset) // change_every] if gating else bases[0]
            frame = await asyncio.to_thread(jpeg, base, rng)
            if gate is not None and not await asyncio.to_thread(
                    gate.admit, Window(k, k, k + 1, frame)):
                load.skipped += 1
                continue
            load.work += 1
            answered.clear()
            box.put((closed, frame))
        with contextlib.suppress(TimeoutError):  # let the last window be answered
            await asyncio.wait_for(answered.wait(), FRESH_S * 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        load.dropped += box.dropped


async def capacity(engine: Engine, gating: bool, seconds: int, max_n: int, until: float,
                   change_every: int = CHANGE_EVERY_S, spread_s: float = 1.0,
                   first_n: int = 1) -> dict[str, Any]:
    """Double N from ``first_n`` (halve it while the first step fails) until a step fails,
    then bisect between the largest pass and the smallest fail; stop when the next step would
    pass ``until`` or N > ``max_n``."""
    best: dict[str, Any] = {"sessions": 0, "steps": []}
    n, failed = first_n, 0
    while 0 < n <= max_n and time.monotonic() + seconds + FRESH_S * 2 + 5 < until:
        load = Load()
        before, t0 = getattr(engine, "tokens_generated", 0), time.monotonic()
        await asyncio.gather(*(session(engine, i, seconds, gating, load, change_every,
                                       spread_s) for i in range(n)))
        rate = (getattr(engine, "tokens_generated", 0) - before) / (time.monotonic() - t0)
        fresh = sorted(load.fresh)
        p95 = fresh[min(len(fresh) - 1, int(0.95 * len(fresh)))] if fresh else float("inf")
        ok = len(fresh) >= (1 - MAX_DROPPED) * load.work and p95 < FRESH_S
        best["steps"].append({"sessions": n, "p95_s": p95, "work": load.work,
                              "served": len(fresh), "skipped": load.skipped, "ok": ok})
        print(f"gating {'on' if gating else 'off'}: {best['steps'][-1]}", flush=True)
        if ok:
            best.update(sessions=n, tokens_per_s=rate, capped=n * 2 > max_n and not failed)
        else:
            failed = n
        n = next_n(n, best["sessions"], failed)
    return best


def next_n(n: int, passed: int, failed: int) -> int:
    """The next load to try: double while passing, halve while nothing passed, then bisect
    between the largest pass and the smallest fail; 0 when done."""
    if not failed:
        return n * 2
    if not passed:
        return n // 2 if n == failed else 0
    middle = (passed + failed) // 2
    return middle if n == failed and middle > passed else 0


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from agent.plugins import collect, get_plugin_manager

    until = time.monotonic() + args.deadline_s
    cuda = args.device.startswith("cuda")
    tokens = 8 if args.small else 32
    windows = 8 if args.small else 60  # the memory step's live windows
    # the memory step's last prompt: every frame (448x448) with its answer
    options: dict[str, Any] = {"max_model_len": 4096 if args.small else 32768}
    if args.engine == "vllm":
        options.update(max_num_seqs=16 if args.small else 256, enable_prefix_caching=True)
    cfg = ModelConfig(engine=args.engine, family=REAL[args.model]["family"], source=args.source,
                      device=args.device, dtype="bfloat16" if cuda else "float32",
                      generation=GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens),
                      options=options if args.engine == "vllm" else {})
    engine = collect(get_plugin_manager()).engines[args.engine](args.model, cfg)
    t0 = time.monotonic()
    await engine.start()
    result: dict[str, Any] = {"load_s": time.monotonic() - t0, "tokens_per_response": tokens}
    try:
        result.update(await ttft(engine, 2 if args.small else 20))
        for memory in (True, False):
            result[f"memory_{'on' if memory else 'off'}"] = await remembered(engine, windows,
                                                                            memory)
        # tiny sizes check every step in seconds: 2 windows, one session, scene change every 2 s
        seconds, max_n, spread = (2, 1, 0.2) if args.small else (6, 1024, 1.0)
        first = 1 if args.small or args.engine != "vllm" else 16
        off_until = until - (until - time.monotonic()) / 2  # half the time left for each
        result["capacity_off"] = await capacity(engine, False, seconds, max_n, off_until,
                                                spread_s=spread, first_n=first)
        result["capacity_on"] = await capacity(engine, True, seconds, max_n, until,
                                               2 if args.small else CHANGE_EVERY_S, spread,
                                               first_n=min(max_n, first * 4))
    finally:
        await engine.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("engine")
    parser.add_argument("model", choices=sorted(REAL))
    parser.add_argument("source")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--deadline-s", type=float, default=400.0)
    print("RESULT " + json.dumps(asyncio.run(main(parser.parse_args()))), flush=True)
