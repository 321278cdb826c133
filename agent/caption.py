"""``streamagent caption DIR -o captions.json``: caption every image in a folder with a model.

Resumable (images already in the output are skipped; the file is rewritten atomically as it
goes), bad images reported and skipped, a progress bar, throughput at the end. Requests run
``concurrency`` at a time: the vLLM engine batches them; the transformers engine takes them one
by one.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from agent.engine import Engine, ModelRequest
from agent.parts import text_only

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SAVE_EVERY = 32


@dataclass
class CaptionRun:
    done: int = 0
    skipped: int = 0
    bad: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    loaded: bool = True
    """Whether the model was loaded (a run with nothing left to caption loads none)."""

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def load(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return dict(data.get("captions", {}))


def save(path: Path, captions: dict[str, str], bad: dict[str, str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"captions": dict(sorted(captions.items())),
                               "errors": dict(sorted(bad.items()))}, indent=1))
    os.replace(tmp, path)


async def caption_folder(engine: Engine, folder: Path, out: Path, prompt: str,
                         concurrency: int = 16, progress: bool = True,
                         start: Callable[[], Awaitable[None]] | None = None) -> CaptionRun:
    """Caption the pictures of ``folder`` not yet in ``out``; ``start`` (the engine's load)
    runs once, when the first readable picture needs the model."""
    loading = asyncio.Lock()
    started = start is None

    async def ready() -> None:
        nonlocal started
        async with loading:
            if not started:
                assert start is not None
                await start()
                started = True

    captions = await asyncio.to_thread(load, out)
    files = await asyncio.to_thread(
        lambda: sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS))
    todo = [p for p in files if str(p.relative_to(folder)) not in captions]
    run = CaptionRun(skipped=len(files) - len(todo))
    bar = tqdm(total=len(todo), unit="img", desc="captioning", disable=not progress)
    sem = asyncio.Semaphore(concurrency)
    began = time.perf_counter()

    async def one(path: Path) -> None:
        key = str(path.relative_to(folder))
        async with sem:
            try:
                image = await asyncio.to_thread(_read, path)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                run.bad[key] = f"not a readable image: {exc}"
                bar.update(1)
                return
            await ready()
            text = "".join([t async for t in text_only(engine.stream(
                ModelRequest(prompt=prompt, images=(image,))))])
        captions[key] = text.strip()
        run.done += 1
        bar.update(1)
        if run.done % SAVE_EVERY == 0:
            save(out, captions, run.bad)

    try:
        await asyncio.gather(*(one(p) for p in todo))
    finally:
        run.loaded = started
        run.seconds = time.perf_counter() - began
        save(out, captions, run.bad)
        bar.close()
    return run


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        return np.array(img.convert("RGB"))
