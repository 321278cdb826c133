"""`make bench`: the spine's three figures, measured in one run, written to docs/performance.md.

1. Ingest: server CPU per session-second for 30 fps 640x480 JPEG streams sampled at 1 fps,
   and the same for the floor (benchmarks/floor.py: a bare websocket server on the same stack
   that parses every message's JSON and drops it); ingest is reported as a ratio to the floor.
2. Added latency: window close -> first delta at the client, with a handler that does no work.
3. Memory: server RSS over a 5-minute stream (frames and audio), sent at 10x real time.

``--compare TREE`` measures another checkout's gateway (ingest and latency) first, in the same
run: its own ``benchmarks.server`` runs with cwd=TREE, so ``import agent`` resolves there; the
clients and the floor are this tree's. ``--quick`` skips memory and writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import websockets
from PIL import Image, ImageDraw, ImageFont

from agent.testing import FONT

ROOT = Path(__file__).resolve().parents[1]
FPS = 30


def camera_frames(n: int = 30) -> list[str]:
    """Camera-like 640x480 JPEGs (texture, text, noise): ~40-60 KB each, as data URLs."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    out = []
    for i in range(n):
        base = np.stack([(x + i * 7) % 256, (y * 2 + i) % 256, (x + y) % 256], -1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(noisy)
        ImageDraw.Draw(img).text((40, 200), f"frame {i}", fill="white",
                                 font=ImageFont.truetype(FONT, 64))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        out.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


class Server:
    """A server process: the gateway (``benchmarks.server`` of the tree at ``cwd``) or the floor
    (``module="benchmarks.floor"``); it prints ``PORT n`` once it serves."""

    def __init__(self, *args: str, module: str = "benchmarks.server", cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args],
                                     stdout=subprocess.PIPE, text=True, cwd=cwd)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"{module} in {cwd} did not start (exit {self.proc.returncode})")
        self.url = f"ws://127.0.0.1:{line.split()[1]}/v1/realtime?model=default"

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


async def stream(url: str, frames: list[str], seconds: float, speed: float = 1.0,
                 audio: bool = False, on_tick: object = None, echo: bool = True) -> list[float]:
    """Stream ``seconds`` of 30 fps media; return window-close -> first-delta latencies (s).
    ``echo`` off: the session asks for item echoes without their data (``echo_media``)."""
    closing_sent: dict[int, float] = {}
    latencies: list[float] = []
    window_of: dict[str, int] = {}
    chunk = base64.b64encode(np.zeros(2400, "<i2").tobytes()).decode()  # 100 ms at 24 kHz
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()
        if not echo:
            await ws.send('{"type":"session.update","session":{"streamagent":'
                          '{"echo_media":false}}}')
            while json.loads(await ws.recv())["type"] != "session.updated":
                pass

        async def receive() -> None:
            async for raw in ws:
                event = json.loads(raw)
                if event["type"] == "response.created":
                    meta = event["response"]["metadata"]
                    window_of[event["response"]["id"]] = int(meta["window_start_ms"]) // 1000
                elif event["type"] == "response.output_text.delta":
                    k = window_of.pop(event["response_id"], None)
                    if k is not None and k + 1 in closing_sent:
                        latencies.append(time.perf_counter() - closing_sent[k + 1])

        receiver = asyncio.create_task(receive())
        began = time.perf_counter()
        for i in range(int(seconds * FPS)):
            ts = i / FPS
            delay = began + ts / speed - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            msg = ('{"type":"conversation.item.create","item":{"type":"message","role":"user",'
                   f'"content":[{{"type":"input_image","image_url":"{frames[i % len(frames)]}","streamagent":'
                   f'{{"timestamp":{ts:.4f}}}}}]}}}}')
            if int(ts) not in closing_sent:
                closing_sent[int(ts)] = time.perf_counter()
            await ws.send(msg)
            if audio and i % 3 == 0:
                await ws.send(f'{{"type":"input_audio_buffer.append","audio":"{chunk}",'
                              f'"streamagent":{{"timestamp":{ts:.4f}}}}}')
            if on_tick is not None and i % (FPS * 30) == 0:
                on_tick(ts)  # type: ignore[operator]
        await asyncio.sleep(1.5)
        receiver.cancel()
    return latencies


async def ingest(frames: list[str], sessions: int, seconds: float,
                 module: str = "benchmarks.server", cwd: Path = ROOT,
                 echo: bool = True) -> dict[str, float]:
    """Server CPU per session while ``sessions`` clients stream; the same for the floor."""
    server = Server(module=module, cwd=cwd)
    try:
        await stream(server.url, frames, 2, echo=echo)  # warm up
        before = server.cpu_s()
        await asyncio.gather(*(stream(server.url, frames, seconds, echo=echo)
                               for _ in range(sessions)))
        used = server.cpu_s() - before
    finally:
        server.stop()
    return {"sessions": sessions, "seconds": seconds,
            "core_pct_per_session": 100 * used / (sessions * (seconds + 1.5))}


async def latency(frames: list[str], sessions: int, seconds: float,
                  cwd: Path = ROOT) -> dict[str, float]:
    server = Server("--no-decode", cwd=cwd)
    try:
        await stream(server.url, frames, 2)
        runs = await asyncio.gather(*(stream(server.url, frames, seconds)
                                      for _ in range(sessions)))
    finally:
        server.stop()
    ms = sorted(1000 * x for run in runs for x in run)
    return {"sessions": sessions, "samples": len(ms), "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


async def memory(frames: list[str], media_s: float, speed: float) -> dict[str, object]:
    server = Server()
    samples: list[tuple[float, float]] = []
    try:
        await stream(server.url, frames, media_s, speed=speed, audio=True,
                     on_tick=lambda ts: samples.append((ts, server.rss_mb())))
        samples.append((media_s, server.rss_mb()))
    finally:
        server.stop()
    steady = [mb for ts, mb in samples if ts >= 60]
    return {"media_s": media_s, "speed": speed, "samples": samples,
            "first_mb": steady[0], "last_mb": steady[-1], "max_mb": max(steady)}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def tree_label(tree: Path) -> str:
    """``PATH (commit[+changes])``, read without touching the tree's index."""
    env = os.environ | {"GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                             env=env)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "no git"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{tree} ({commit}{'+changes' if dirty else ''})"


def ingest_row(ing: dict, floor: dict) -> str:
    return (f"**{ing['core_pct_per_session']:.2f} % of a core**, "
            f"**{ing['core_pct_per_session'] / floor['core_pct_per_session']:.2f}x the floor**")


def write(results: dict, path: Path) -> None:
    ing, lat1, lat4, mem, floor = (results[k] for k in
                                   ("ingest", "latency1", "latency4", "memory", "floor"))
    trace = ", ".join(f"{ts:.0f} s: {mb:.0f} MB" for ts, mb in mem["samples"])
    rounds = f", median of {ing['rounds']} rounds" if ing["rounds"] > 1 else ""
    base = ""
    if "base" in results:
        b = results["base"]
        base = f"""
Today's code, measured first in the same run (`python -m benchmarks.run --compare TREE`):
{b['label']}: ingest {ingest_row(b['ingest'], floor)}; added latency p50 {b['latency1']['p50_ms']:.1f} ms,
p99 {b['latency1']['p99_ms']:.1f} ms (1 session), p50 {b['latency4']['p50_ms']:.1f} ms (4 sessions).
This tree: {results['label']}.
"""
    section = f"""<!-- bench:spine -->
## Spine: ingest, added latency, session memory

Measured by `make bench` on {time.strftime('%Y-%m-%d')}, {machine()}, no GPU, load average
{results['load']:.1f} at the start (a shared machine: compare ratios, not % of a core, across
runs). The server runs in its own process (the real gateway, echo handler, fake engine); clients
are another process on loopback.

| figure | result | target |
|---|---|---|
| ingest: server CPU per session, 30 fps 640x480 JPEG (~{ing['jpeg_kb']:.0f} KB) sampled at 1 fps, {ing['sessions']} sessions x {ing['seconds']:.0f} s{rounds} | {ingest_row(ing, floor)} | <= 1.3x the floor |
| same, the session's item echoes without their frames (`streamagent.echo_media: false`) | {ingest_row(results['echo_off'], floor)} | <= 1.3x the floor |
| the floor: a bare websocket server on the same stack, same clients and frames, `json.loads` and drop | {floor['core_pct_per_session']:.2f} % of a core | |
| added latency, window close -> first delta at the client, handler does no work, 1 session | **p50 {lat1['p50_ms']:.1f} ms, p99 {lat1['p99_ms']:.1f} ms** ({lat1['samples']} windows) | p50 <= 10 ms |
| same, {lat4['sessions']} concurrent sessions at 30 fps | p50 {lat4['p50_ms']:.1f} ms, p99 {lat4['p99_ms']:.1f} ms ({lat4['samples']} windows) | |
| memory: server RSS over a {mem['media_s'] / 60:.0f}-minute stream (30 fps frames + 24 kHz audio, sent at {mem['speed']:.0f}x) | {mem['first_mb']:.0f} MB at 1 min -> {mem['last_mb']:.0f} MB at the end (max {mem['max_mb']:.0f} MB) | flat |
{base}
- Ingest counts everything the server does per session: websocket frames, JSON parsing and
  validation of ~{ing['jpeg_kb'] * 4 / 3:.0f} KB messages, the 12-byte signature check of every frame,
  sampling, and decoding **one** frame per second (the other 29 are never decoded).
- The floor (`benchmarks/floor.py`) is measured in the same run with the same clients and
  frames: uvicorn with the websockets-sansio protocol and the gateway's uvicorn config, a
  Starlette websocket route that parses each message's JSON and drops it. The ratio is what the
  gateway costs over receiving and parsing the bytes at all; the machine's speed and load
  largely cancel out in it, as they do not in the % of a core.
- Added latency is measured from the moment the client sends the first frame of window k+1
  (which closes window k) to the moment it receives the first delta of window k's response, so
  it includes both directions on loopback and the client's own JSON handling.
- Memory trace (media time: RSS): {trace}.
<!-- /bench:spine -->"""
    text = path.read_text() if path.exists() else "# Performance\n"
    if "<!-- bench:spine -->" in text:
        text = re.sub(r"<!-- bench:spine -->.*<!-- /bench:spine -->", lambda _: section, text,
                      flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


async def ingest_rounds(frames: list[str], trees: dict[str, Path], rounds: int, sessions: int,
                        seconds: float) -> dict[str, dict]:
    """Ingest for each tree in order (the baseline first), then the floor, ``rounds`` times over
    (interleaved, so a busy machine's drift falls on all of them); medians per server."""
    runs: dict[str, list[float]] = {name: [] for name in [*trees, "echo_off", "floor"]}
    for r in range(rounds):
        for name in runs:
            if name == "floor":
                res = await ingest(frames, sessions, seconds, module="benchmarks.floor")
            elif name == "echo_off":
                res = await ingest(frames, sessions, seconds, echo=False)
            else:
                res = await ingest(frames, sessions, seconds, cwd=trees[name])
            runs[name].append(res["core_pct_per_session"])
        line = ", ".join(f"{name} {pcts[-1]:.2f} %" for name, pcts in runs.items())
        print(f"ingest round {r + 1}/{rounds}: {line} of a core per session", flush=True)
    return {name: {"sessions": sessions, "seconds": seconds, "rounds": rounds,
                   "core_pct_per_session": statistics.median(pcts), "rounds_pct": pcts}
            for name, pcts in runs.items()}


def summary(results: dict[str, dict]) -> str:
    floor = results["floor"]["core_pct_per_session"]
    lines = [f"  {'floor (bare websocket server, same stack)':<48} {floor:6.2f} % of a core"]
    off = results["echo_off"]["core_pct_per_session"]
    lines.append(f"  {'this tree, echo_media off':<48} {off:6.2f} % of a core  "
                 f"{off / floor:5.2f}x floor")
    for entry in ([results["base"]] if "base" in results else []) + [results]:
        pct = entry["ingest"]["core_pct_per_session"]
        lat1, lat4 = entry["latency1"], entry["latency4"]
        lines.append(f"  {entry['label']:<48} {pct:6.2f} % of a core  {pct / floor:5.2f}x floor"
                     f"  latency p50 {lat1['p50_ms']:.1f} ms (1), {lat4['p50_ms']:.1f} ms (4)")
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, metavar="TREE",
                        help="another checkout (today's code), measured first in the same run")
    parser.add_argument("--quick", action="store_true",
                        help="ingest and latency only (no memory), nothing written to the docs")
    parser.add_argument("--rounds", type=int, default=1,
                        help="ingest measurements per server, interleaved; medians reported")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of each ingest and latency stream (default 20)")
    args = parser.parse_args(argv)
    trees: dict[str, Path] = {}
    if args.compare is not None:
        base = args.compare.resolve()
        if not (base / "benchmarks" / "server.py").exists():
            parser.error(f"{base} has no benchmarks/server.py")
        trees["base"] = base
    trees["this"] = ROOT

    load = os.getloadavg()[0]
    frames = camera_frames()
    kb = statistics.mean(len(f) * 3 / 4 for f in frames) / 1024
    print(f"machine: {machine()}, load average {load:.2f}; frames ~{kb:.0f} KB", flush=True)
    ingests = await ingest_rounds(frames, trees, args.rounds, sessions=4, seconds=args.seconds)
    entries: dict[str, dict] = {}
    for name, tree in trees.items():
        entry: dict = {"label": tree_label(tree), "ingest": ingests[name] | {"jpeg_kb": kb}}
        entry["latency1"] = await latency(frames, sessions=1, seconds=args.seconds, cwd=tree)
        print(f"latency, 1 session, {name}:", entry["latency1"], flush=True)
        entry["latency4"] = await latency(frames, sessions=4, seconds=args.seconds, cwd=tree)
        print(f"latency, 4 sessions, {name}:", entry["latency4"], flush=True)
        entries[name] = entry
    results: dict = entries["this"] | {"floor": ingests["floor"], "load": load,
                                       "echo_off": ingests["echo_off"]}
    if "base" in entries:
        results["base"] = entries["base"]
    print(f"ingest per session ({args.rounds} round(s) of 4 sessions x {args.seconds:.0f} s; "
          f"target <= 1.3x floor):\n{summary(results)}", flush=True)
    if args.quick:
        return
    results["memory"] = await memory(frames, media_s=300, speed=10)
    print("memory:", {k: v for k, v in results["memory"].items() if k != "samples"}, flush=True)
    write(results, ROOT / "docs" / "performance.md")
    print("written to docs/performance.md")


if __name__ == "__main__":
    asyncio.run(main())
