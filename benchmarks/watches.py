"""Watches: the cost of N watches per window against one describe of the window, in one run.

For N = 1, 4 and 16 watches of one kind, the time from a window reaching a session's watches
(``agent.watch_runner.Watches``, through the model pool) until every watch has its verdict:
the median over WINDOWS windows, each fed once the one before is checked (none dropped).

- ``text_contains``: the embedded OCR (RapidOCR), one call per window whatever N;
- ``face``: the embedded face detector (OpenCV's Haar cascade), the same;
- ``condition``: one yes/no question per watch, constrained to ``"yes"`` / ``"no"``, on the
  tiny Qwen3-VL with the transformers engine, and on the tiny Qwen2-VL with vLLM (CPU).

Against: one describe of the same frames (``DESCRIBE_TOKENS`` tokens) by the engine's LLM.
Each window has a frame of its own, 640x480, with words and a face, so that the OCR and the
detector have work to do and no engine answers from a cache of the window before.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import data as skdata

from agent.config import Config, ModelConfig, ProfileConfig
from agent.engine import ModelRequest
from agent.handler import SessionOptions
from agent.media import RGB, Frame, Window
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FONT
from agent.tiny import build
from agent.watch_runner import Watches
from agent.watches import Watch, resolve
from benchmarks.docs import write_block
from benchmarks.run import machine
from plugins.hf.handlers import DESCRIBE

COUNTS = (1, 4, 16)
WINDOWS = 20
DESCRIBE_TOKENS = 32
LLMS = {"transformers": ("qwen3-vl", {}),
        "vllm": ("qwen2-vl", {"max_num_seqs": 16, "enable_prefix_caching": True})}
Make = Callable[[int], Watch]
EMBEDDED: dict[str, Make] = {
    "text_contains": lambda k: Watch(f"t{k}", "text_contains", f"word {k}"),
    "face": lambda k: Watch(f"f{k}", "face", "appears" if k % 2 else "leaves"),
}


def condition(model: str) -> Make:
    return lambda k: Watch(f"c{k}", "condition", f"Item number {k} is in view.", model=model)


def pictures() -> list[RGB]:
    """A frame per window, each a little different (a live camera's are: no engine may serve
    one from a cache of the last)."""
    face = Image.fromarray(np.asarray(skdata.astronaut())).resize(  # type: ignore[no-untyped-call]
        (300, 300))
    out = []
    for i in range(WINDOWS + 1):
        img = Image.new("RGB", (640, 480), "white")
        img.paste(face, (150 + 4 * i, 170))
        ImageDraw.Draw(img).text((60, 50), f"EMERGENCY EXIT {i}", fill="black",
                                 font=ImageFont.truetype(FONT, 56))
        out.append(np.asarray(img))
    return out


def marked(image: RGB, j: int) -> RGB:
    """``image`` with one pixel of its own: each series sees a frame no other series saw, as in
    a session of its own (vLLM's prefix cache would otherwise share one series' prefill)."""
    out = image.copy()
    out[0, 0] = (j, 255 - j, 0)
    return out


async def check(watches: Watches, i: int, image: RGB) -> float:
    """Seconds for ``watches`` to check window ``i``, whose frame is ``image``."""
    began = time.perf_counter()
    watches.feed(Window(i, i, i + 1.0, Frame.of_image(image, i + 0.5)))
    # the runner has no event to wait on; a 0.5 ms poll is below the figures' grain
    while watches.checked <= i:  # noqa: ASYNC110
        await asyncio.sleep(0.0005)
    return time.perf_counter() - began


async def describe(runtime: Runtime, image: RGB) -> float:
    """Seconds of one describe of ``image`` by the LLM, ``DESCRIBE_TOKENS`` long."""
    request = ModelRequest(prompt=DESCRIBE, images=(image,), options={
        "max_new_tokens": DESCRIBE_TOKENS, "min_new_tokens": DESCRIBE_TOKENS})
    began = time.perf_counter()
    async for _part in runtime.pool.stream("llm", request):
        pass
    return time.perf_counter() - began


async def measure(engine: str, source: Path, images: list[RGB]) -> dict[str, Any]:
    """Median seconds of a describe and of each kind's N watches per window. Window by window,
    every series takes its turn, so that a busy spell of a shared machine falls on all alike;
    the first window warms up."""
    family, options = LLMS[engine]
    model = ModelConfig(engine=engine, family=family, source=str(source), options=options,
                        handlers=["describe"])
    runtime = Runtime.build(Config(models={"llm": model}), get_plugin_manager())
    await runtime.pool.start()
    kinds = {**(EMBEDDED if engine == "transformers" else {}), "condition": condition("llm")}
    runners = {(kind, n): Watches(runtime.pool, "bench", SessionOptions(), lambda f: None)
               for kind in kinds for n in COUNTS}
    times: dict[Any, list[float]] = {key: [] for key in ["describe", *runners]}
    try:
        for (kind, n), watches in runners.items():
            make = kinds[kind]
            watches.set(resolve(tuple(make(k) for k in range(n)), runtime, ProfileConfig()))
        for i, image in enumerate(images):
            times["describe"].append(await describe(runtime, image))
            for j, (key, watches) in enumerate(runners.items(), 1):
                times[key].append(await check(watches, i, marked(image, j)))
    finally:
        for watches in runners.values():
            await watches.close()
        await runtime.pool.close()
    assert not any(w.failed or w.dropped for w in runners.values())
    median = {key: statistics.median(t[1:]) for key, t in times.items()}
    out: dict[str, Any] = {"describe": median["describe"]}
    for kind in kinds:
        out[kind] = {n: median[(kind, n)] for n in COUNTS}
    print(engine, {k: f"{s * 1000:.1f} ms" for k, s in median.items()}, flush=True)
    return out


async def main() -> dict[str, Any]:
    tmp, images = Path(tempfile.mkdtemp()), pictures()
    load = os.getloadavg()[0]
    out = {engine: await measure(engine, build(family, tmp / family), images)
           for engine, (family, _) in LLMS.items()}
    return out | {"load": max(load, os.getloadavg()[0])}


def cell(seconds: float, describe_s: float) -> str:
    return f"{seconds * 1000:.0f} ms (**{seconds / describe_s:.2f}x**)"


def section(r: dict[str, Any]) -> str:
    hf, vl = r["transformers"], r["vllm"]
    rows = [f"| {n} | {cell(hf['text_contains'][n], hf['describe'])} | "
            f"{cell(hf['face'][n], hf['describe'])} | {cell(hf['condition'][n], hf['describe'])}"
            f" | {cell(vl['condition'][n], vl['describe'])} |" for n in COUNTS]
    return f"""<!-- bench:watches -->
## Watches

Measured by `make bench` (`benchmarks/watches.py`) on {time.strftime('%Y-%m-%d')},
{machine()}, no GPU, on a machine shared with other work (load average
{r['load']:.1f} around the run): the time for N watches of one kind to check a window
(median of {WINDOWS} windows, none dropped), against one describe of the window's 640x480
frame ({DESCRIBE_TOKENS} tokens) by the engine's LLM: {hf['describe'] * 1000:.0f} ms for the
tiny Qwen3-VL on transformers, {vl['describe'] * 1000:.0f} ms for the tiny Qwen2-VL on vLLM
(CPU). Each cell: the time, and its ratio to that describe (the embedded kinds' to the
transformers one). Window by window every series takes its turn, so a busy spell of the
machine falls on all of them alike; what is left of it shows as spread within a column.

| watches per window | `text_contains` (OCR) | `face` | `condition`, transformers | `condition`, vLLM |
|---|---|---|---|---|
{chr(10).join(rows)}

The embedded kinds make one model call per window whatever the number of watches (the OCR
reads the frame once, then each watch looks for its phrase), so 16 cost about what 1 costs.
A `condition` is one constrained question per watch (a prefill with the frame, then at most
5 tokens): on transformers they run one after the other, so the cost grows with N; vLLM
batches them, and its prefix cache shares the window's frame among them (the picture comes
before the question in the prompt). The tiny checkpoints are toys (2 layers): a real LLM
makes both the describe and each question far costlier, and the question's share of it (a
prefill and a few tokens, against a prefill and {DESCRIBE_TOKENS} tokens) is what carries
over, not these milliseconds.
<!-- /bench:watches -->"""


if __name__ == "__main__":
    res = asyncio.run(main())
    block = section(res)
    write_block("watches", block)
    print(block)
