"""`make bench`: the spine's three figures, measured in one run, written to docs/performance.md.

1. Ingest: server CPU per session-second for 30 fps 640x480 JPEG streams sampled at 1 fps.
2. Added latency: window close -> first delta at the client, with a handler that does no work.
3. Memory: server RSS over a 5-minute stream (frames and audio), sent at 10x real time.
"""

from __future__ import annotations

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
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.server", *args],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = f"ws://127.0.0.1:{line.split()[1]}/v1/realtime?model=default"

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


async def stream(url: str, frames: list[str], seconds: float, speed: float = 1.0,
                 audio: bool = False, on_tick: object = None) -> list[float]:
    """Stream ``seconds`` of 30 fps media; return window-close -> first-delta latencies (s)."""
    closing_sent: dict[int, float] = {}
    latencies: list[float] = []
    window_of: dict[str, int] = {}
    chunk = base64.b64encode(np.zeros(2400, "<i2").tobytes()).decode()  # 100 ms at 24 kHz
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()

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


async def ingest(frames: list[str], sessions: int, seconds: float) -> dict[str, float]:
    server = Server()
    try:
        await stream(server.url, frames, 2)  # warm up
        before = server.cpu_s()
        await asyncio.gather(*(stream(server.url, frames, seconds) for _ in range(sessions)))
        used = server.cpu_s() - before
    finally:
        server.stop()
    return {"sessions": sessions, "seconds": seconds,
            "core_pct_per_session": 100 * used / (sessions * (seconds + 1.5))}


async def latency(frames: list[str], sessions: int, seconds: float) -> dict[str, float]:
    server = Server("--no-decode")
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


def write(results: dict[str, dict], path: Path) -> None:
    ing, lat1, lat4, mem = (results[k] for k in ("ingest", "latency1", "latency4", "memory"))
    trace = ", ".join(f"{ts:.0f} s: {mb:.0f} MB" for ts, mb in mem["samples"])
    section = f"""<!-- bench:spine -->
## Spine: ingest, added latency, session memory

Measured by `make bench` on {time.strftime('%Y-%m-%d')}, {machine()}. The server runs in its own
process (the real gateway, echo handler, fake engine); clients are another process on loopback.

| figure | result | target |
|---|---|---|
| ingest: server CPU per session, 30 fps 640x480 JPEG (~{ing['jpeg_kb']:.0f} KB) sampled at 1 fps, {ing['sessions']} sessions x {ing['seconds']:.0f} s | **{ing['core_pct_per_session']:.2f} % of a core** | <= 3 % |
| added latency, window close -> first delta at the client, handler does no work, 1 session | **p50 {lat1['p50_ms']:.1f} ms, p99 {lat1['p99_ms']:.1f} ms** ({lat1['samples']} windows) | p50 <= 10 ms |
| same, {lat4['sessions']} concurrent sessions at 30 fps | p50 {lat4['p50_ms']:.1f} ms, p99 {lat4['p99_ms']:.1f} ms ({lat4['samples']} windows) | |
| memory: server RSS over a {mem['media_s'] / 60:.0f}-minute stream (30 fps frames + 24 kHz audio, sent at {mem['speed']:.0f}x) | {mem['first_mb']:.0f} MB at 1 min -> {mem['last_mb']:.0f} MB at the end (max {mem['max_mb']:.0f} MB) | flat |

- Ingest counts everything the server does per session: websocket frames, JSON parsing and
  validation of ~{ing['jpeg_kb'] * 4 / 3:.0f} KB messages, the 12-byte signature check of every frame,
  sampling, and decoding **one** frame per second (the other 29 are never decoded).
- Added latency is measured from the moment the client sends the first frame of window k+1
  (which closes window k) to the moment it receives the first delta of window k's response, so
  it includes both directions on loopback and the client's own JSON handling.
- Memory trace (media time: RSS): {trace}.
<!-- /bench:spine -->"""
    text = path.read_text() if path.exists() else "# Performance\n"
    if "<!-- bench:spine -->" in text:
        text = re.sub(r"<!-- bench:spine -->.*<!-- /bench:spine -->", section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


async def main() -> None:
    frames = camera_frames()
    kb = statistics.mean(len(f) * 3 / 4 for f in frames) / 1024
    print(f"machine: {machine()}; frames ~{kb:.0f} KB", flush=True)
    results: dict[str, dict] = {}
    results["ingest"] = await ingest(frames, sessions=4, seconds=20) | {"jpeg_kb": kb}
    print("ingest:", results["ingest"], flush=True)
    results["latency1"] = await latency(frames, sessions=1, seconds=20)
    print("latency, 1 session:", results["latency1"], flush=True)
    results["latency4"] = await latency(frames, sessions=4, seconds=20)
    print("latency, 4 sessions:", results["latency4"], flush=True)
    results["memory"] = await memory(frames, media_s=300, speed=10)
    print("memory:", {k: v for k, v in results["memory"].items() if k != "samples"}, flush=True)
    write(results, ROOT / "docs" / "performance.md")
    print("written to docs/performance.md")


if __name__ == "__main__":
    asyncio.run(main())
