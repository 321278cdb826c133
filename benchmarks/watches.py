"""Watches: the cost of N watches per window against one describe of the same frame, in one run.

For N = 1, 4 and 16 watches of one kind, the time from a window reaching a session's watches
(``agent.watch_runner.Watches``, through the model pool) until every watch has its verdict:
the median over WINDOWS windows, each fed once the one before is checked (none dropped).

- ``text_contains``: the embedded OCR (RapidOCR), one call per window whatever N;
- ``face``: the embedded face detector (OpenCV's Haar cascade), the same;
- ``condition``: one yes/no question per watch, constrained to ``"yes"`` / ``"no"``, on the
  tiny Qwen3-VL with the transformers engine, and on the tiny Qwen2-VL with vLLM (CPU).

Against: one describe of the same frame (``DESCRIBE_TOKENS`` tokens) by the engine's LLM. The
frame is 640x480, with words and a face, so that the OCR and the detector have work to do.
"""

from __future__ import annotations

import asyncio
import re
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
from benchmarks.run import ROOT, machine
from plugins.hf.handlers import DESCRIBE

COUNTS = (1, 4, 16)
WINDOWS = 8
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


def picture() -> RGB:
    img = Image.new("RGB", (640, 480), "white")
    face = Image.fromarray(np.asarray(skdata.astronaut())).resize((300, 300))
    img.paste(face, (170, 170))
    ImageDraw.Draw(img).text((80, 50), "EMERGENCY EXIT", fill="black",
                             font=ImageFont.truetype(FONT, 56))
    return np.asarray(img)


async def per_window(runtime: Runtime, make: Make, n: int, image: RGB) -> float:
    """Median seconds for ``n`` watches made by ``make`` to check one window."""
    watches = Watches(runtime.pool, "bench", SessionOptions(), lambda firing: None)
    watches.set(resolve(tuple(make(k) for k in range(n)), runtime, ProfileConfig()))
    times = []
    try:
        for i in range(WINDOWS + 1):  # the first warms up
            began = time.perf_counter()
            watches.feed(Window(i, i, i + 1.0, Frame.of_image(image, i + 0.5)))
            while watches.checked <= i:
                await asyncio.sleep(0.0005)
            times.append(time.perf_counter() - began)
    finally:
        await watches.close()
    assert not watches.failed and not watches.dropped, (watches.failed, watches.dropped)
    return statistics.median(times[1:])


async def describe(runtime: Runtime, model: str, image: RGB) -> float:
    """Median seconds of one describe of ``image`` by ``model``, ``DESCRIBE_TOKENS`` long."""
    request = ModelRequest(prompt=DESCRIBE, images=(image,), options={
        "max_new_tokens": DESCRIBE_TOKENS, "min_new_tokens": DESCRIBE_TOKENS})
    times = []
    for _ in range(WINDOWS + 1):
        began = time.perf_counter()
        async for _part in runtime.pool.stream(model, request):
            pass
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


async def measure(engine: str, source: Path, image: RGB) -> dict[str, Any]:
    family, options = LLMS[engine]
    model = ModelConfig(engine=engine, family=family, source=str(source), options=options,
                        handlers=["describe"])
    runtime = Runtime.build(Config(models={"llm": model}), get_plugin_manager())
    await runtime.pool.start()
    try:
        out: dict[str, Any] = {"describe": await describe(runtime, "llm", image)}
        kinds = {**(EMBEDDED if engine == "transformers" else {}),
                 "condition": condition("llm")}
        for kind, make in kinds.items():
            out[kind] = {n: await per_window(runtime, make, n, image) for n in COUNTS}
            print(engine, kind, {n: f"{s * 1000:.1f} ms" for n, s in out[kind].items()},
                  flush=True)
    finally:
        await runtime.pool.close()
    return out


async def main() -> dict[str, Any]:
    tmp, image = Path(tempfile.mkdtemp()), picture()
    return {engine: await measure(engine, build(family, tmp / family), image)
            for engine, (family, _) in LLMS.items()}


def cell(seconds: float, describe_s: float) -> str:
    return f"{seconds * 1000:.0f} ms (**{seconds / describe_s:.2f}x**)"


def section(r: dict[str, Any]) -> str:
    hf, vl = r["transformers"], r["vllm"]
    rows = [f"| {n} | {cell(hf['text_contains'][n], hf['describe'])} | "
            f"{cell(hf['face'][n], hf['describe'])} | {cell(hf['condition'][n], hf['describe'])}"
            f" | {cell(vl['condition'][n], vl['describe'])} |" for n in COUNTS]
    return f"""<!-- bench:watches -->
## Watches

Measured by `make bench` (`benchmarks/watches.py`) on {time.strftime('%Y-%m-%d')}, {machine()},
no GPU: the time for N watches of one kind to check a window (median of {WINDOWS} windows,
none dropped), against one describe of the same 640x480 frame ({DESCRIBE_TOKENS} tokens) by the
engine's LLM: {hf['describe'] * 1000:.0f} ms for the tiny Qwen3-VL on transformers,
{vl['describe'] * 1000:.0f} ms for the tiny Qwen2-VL on vLLM (CPU). Each cell: the time, and
its ratio to that describe (the embedded kinds to the transformers one).

| watches per window | `text_contains` (OCR) | `face` | `condition`, transformers | `condition`, vLLM |
|---|---|---|---|---|
{chr(10).join(rows)}

The embedded kinds make one model call per window whatever the number of watches (the OCR
reads the frame once, then each watch looks for its phrase), so 16 cost what 1 costs. A
`condition` is one constrained question per watch (a prefill with the frame, then at most 5
tokens): on transformers they run one after the other, so the cost grows with N; vLLM batches
them, and its prefix cache shares the frame. The tiny checkpoints are toys (2 layers): a real
LLM makes both the describe and each question far costlier, and the question's share of it
(a prefill and a few tokens, against a prefill and {DESCRIBE_TOKENS} tokens) is what carries
over, not these milliseconds.
<!-- /bench:watches -->"""


if __name__ == "__main__":
    res = asyncio.run(main())
    path = ROOT / "docs" / "performance.md"
    text = path.read_text()
    block = section(res)
    if "<!-- bench:watches -->" in text:
        text = re.sub(r"<!-- bench:watches -->.*<!-- /bench:watches -->", block, text,
                      flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(block)
    print("written to docs/performance.md")
