"""`make bench`: ``streamagent caption`` at 1 000 and 20 000 images, the streaming pipeline
against the folder-at-once one it replaced.

Each run is a fresh process (``--child``) that captions a folder of generated 32x32 PNGs with
``agent.testing.FakeEngine`` (3 words per caption: about 0.3 ms of engine time per image, so
what is measured is the captioning pipeline: listing, reading, queueing, writing) and reports
its wall time and its peak RSS. The tiny real checkpoints take 20-100 ms per image on this
machine's CPUs: 20 000 of them, twice, would take most of an hour, and the model's time, the
same per image in both implementations, would hide the pipeline's.

"before": ``agent/caption.py`` as it was at ``OLD`` (rewrites ``captions.json`` every 32 images,
a coroutine per image created up front), imported from a temporary copy. "after": this tree,
``--format jsonl`` and ``--format txt``. The target: per-image cost and peak memory
within 1.2x between 1 000 and 20 000 images. Figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.docs import write_block
from benchmarks.run import machine

ROOT = Path(__file__).resolve().parents[1]
OLD = "71be3b0"
"""The last commit with the folder-at-once pipeline: its agent/caption.py is "before"."""
SIZES = (1000, 20000)
RUNS = ("before", "after-jsonl", "after-txt")
REPEATS = {1000: 2, 20000: 1}


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def make_images(folder: Path, n: int) -> None:
    """``n`` distinct 32x32 PNGs, 1 000 per subfolder (not timed)."""
    for i in range(n):
        sub = folder / f"{i // 1000:03}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (i % 256, i // 256 % 256, 0)).save(sub / f"{i:06}.png")


def old_module(tmp: Path) -> Any:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD}:agent/caption.py"],
                            capture_output=True, text=True, check=True,
                            env=os.environ | {"GIT_OPTIONAL_LOCKS": "0"}).stdout
    path = tmp / "caption_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("caption_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["caption_before"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def child(which: str, folder: Path, out: Path) -> dict[str, Any]:
    """One run, in this (fresh) process."""
    from agent.config import ModelConfig
    from agent.testing import FakeEngine

    class Engine(FakeEngine):
        """FakeEngine without its record of every request (tests read it; here it would grow
        with the folder and be counted as the pipeline's memory)."""

        def generate(self, request: Any, cancelled: Any) -> Any:
            try:
                yield from super().generate(request, cancelled)
            finally:
                self.requests.clear()

    engine = Engine("fake", ModelConfig(engine="fake", options={"tokens": 3}))
    if which == "before":
        caption_folder = old_module(out.parent).caption_folder
        call = caption_folder(engine, folder, out / "captions.json", "Describe.", 16,
                              progress=False, start=engine.start)
    else:
        from agent.caption import CaptionAsk
        from agent.caption import caption_folder as new
        from agent.caption_sinks import open_sink

        fmt = which.split("-")[1]
        sink = open_sink(fmt, folder, out / "captions.jsonl" if fmt == "jsonl" else None,
                         errors=out / "errors.jsonl")
        call = new(engine, folder, concurrency=16, progress=False, start=engine.start,
                   sink=sink, ask=CaptionAsk())
    before = rss_mb()
    began = time.perf_counter()
    run = asyncio.run(call)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": run.done, "seconds": seconds, "rss_before_mb": before,
            "peak_mb": peak, "added_mb": peak - before}


def measure(which: str, folder: Path, tmp: Path) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(dir=tmp))
    if which == "after-txt":  # sidecars go beside the images: a copy of the folder each time
        for sidecar in folder.rglob("*.txt"):
            sidecar.unlink()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.captions", "--child", which,
                           str(folder), str(out)], capture_output=True, text=True, cwd=ROOT,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} on {folder}: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["ms_per_image"] = 1000 * result["seconds"] / result["images"]
    print(which, folder.name, result, flush=True)
    return result


def section(r: dict[str, dict[int, dict[str, Any]]]) -> str:
    small, big = SIZES
    rows = []
    for which in RUNS:
        a, b = r[which][small], r[which][big]
        rows.append(
            f"| {which} | {a['ms_per_image']:.2f} | {b['ms_per_image']:.2f} | "
            f"**{b['ms_per_image'] / a['ms_per_image']:.2f}x** | {a['peak_mb']:.0f} | "
            f"{b['peak_mb']:.0f} | **{b['peak_mb'] / a['peak_mb']:.2f}x** | "
            f"{a['added_mb']:.1f} | {b['added_mb']:.1f} |")
    return f"""<!-- bench:captions -->
## Captioning a folder: cost per image and memory, 1 000 vs 20 000 images

Measured by `benchmarks/captions.py` (`make bench`) on {time.strftime('%Y-%m-%d')}, {machine()},
cores shared with other work (runs at 1 000: the faster of two). Each run is a fresh process captioning generated 32x32 PNGs with
`agent.testing.FakeEngine` (3 words, ~0.3 ms of engine time per image: the pipeline is what is
measured; a tiny real checkpoint takes 20-100 ms per image here, the same in both versions).
"before": `agent/caption.py` at {OLD} (rewrites `captions.json` every 32 images, one coroutine
per image created up front); "after": this tree, `--format jsonl` and `--format txt`
(sidecars), 16 in flight. Peak: the process's peak RSS (imports included); added: peak minus
RSS just before the run.

| run | ms/image at {small} | at {big} | ratio | peak MB at {small} | at {big} | ratio | added MB at {small} | at {big} |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The target: per-image cost and peak memory within 1.2x between {small} and {big} images.
<!-- /bench:captions -->"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child", nargs=3, metavar=("RUN", "FOLDER", "OUT"))
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs")
    args = parser.parse_args()
    if args.child:
        which, folder, out = args.child
        print(json.dumps(child(which, Path(folder), Path(out))))
        return
    with tempfile.TemporaryDirectory(prefix="sa-captions-") as tmp:
        results: dict[str, dict[int, dict[str, Any]]] = {w: {} for w in RUNS}
        for size in SIZES:
            folder = Path(tmp) / f"images-{size}"
            make_images(folder, size)
            for which in RUNS:  # the small runs twice, keeping the faster (shared cores)
                tries = [measure(which, folder, Path(tmp)) for _ in range(REPEATS[size])]
                results[which][size] = min(tries, key=lambda r: r["seconds"])
    text = section(results)
    print(text)
    if not args.no_write:
        write_block("captions", text)


if __name__ == "__main__":
    main()
