"""`make soak`: abusive clients against a live server while a well-behaved one keeps asking.

The server is `streamagent serve` on the embedded default, in its own process (RSS from /proc).
For the whole run, each kind of abuse loops on 127.0.0.1:

- ``response_flood``: 200 ``response.create`` and malformed events at once, on one connection;
- ``idle_sockets``: sockets that connect and never speak (realtime and Gemini paths);
- ``non_reader``: floods events and never reads its socket, then vanishes without a close;
- ``oversized``: messages over ``max_message_bytes`` (the socket closes with 1009);
- ``audio_flood``: audio as fast as the socket takes it;
- ``chat_bomb``: chat completions with many 4096x4096 images;
- ``hit_and_run``: asks a question and disconnects at once.

Meanwhile the well-behaved client shows a new word every second and asks what it reads; an
answer counts when it names the word. Reported: answers right, latency p50/p95 (ask -> done),
server RSS and task count before and after (RSS is also sampled every 10 s: the median of each
minute and the peak).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from PIL import Image

from agent.testing import data_url, image_event, jpeg_bytes

WORDS = ["APPLE", "BANANA", "CHERRY", "LEMON", "MANGO", "OLIVE", "PEACH", "GRAPE"]
CONFIG = """
server:
  max_sessions: 48
  slow_client_timeout_s: 5
  max_message_bytes: 2097152
"""


@dataclass
class Figures:
    asked: int = 0
    right: int = 0
    latencies: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    abuse: dict[str, int] = field(default_factory=dict)


class Server:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "serve", "--port", "0", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        for _ in range(200):
            line = self.proc.stdout.readline()
            if "realtime endpoint:" in line:
                self.realtime = line.split("realtime endpoint:")[1].strip()
                break
        else:
            raise RuntimeError("the server printed no endpoint")
        self.http = self.realtime.replace("ws://", "http://").split("/v1/")[0]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            body: dict[str, Any] = (await http.get(f"{self.http}/healthz")).json()
            return body

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def good_client(server: Server, until: float, figures: Figures) -> None:
    async with websockets.connect(server.realtime, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {
            "streamagent": {"handlers": ["text_in_view"]}}}))
        i = 0
        while time.monotonic() < until:
            word = WORDS[i % len(WORDS)]
            i += 1
            began = time.monotonic()
            await ws.send(json.dumps(image_event(data_url(jpeg_bytes(word, (640, 480))),
                                                 text="what does it say?")))
            await ws.send(json.dumps({"type": "response.create"}))
            figures.asked += 1
            text = await _until_done(ws)
            figures.latencies.append(time.monotonic() - began)
            if word in text.upper():
                figures.right += 1
            else:
                figures.wrong.append(text)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))


async def _until_done(ws: websockets.ClientConnection) -> str:
    parts = []
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if event["type"] == "response.output_text.delta":
            parts.append(event["delta"])
        elif event["type"] == "response.done":
            return "".join(parts)


async def response_flood(server: Server) -> None:
    async with websockets.connect(server.realtime, max_size=None) as ws:
        await ws.send(json.dumps(image_event(data_url(jpeg_bytes("FLOOD")))))
        for i in range(200):
            await ws.send(json.dumps({"type": "response.create"}))
            if i % 20 == 0:
                await ws.send("{not json")
                await ws.send(json.dumps({"type": "no.such.event"}))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                async for _ in ws:
                    pass


async def idle_sockets(server: Server) -> None:
    gemini = server.realtime.replace(
        "/v1/realtime?model=default",
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent")
    socks = []
    for url in [server.realtime] * 4 + [gemini] * 4:
        with contextlib.suppress(Exception):
            socks.append(await websockets.connect(url, open_timeout=5))
    await asyncio.sleep(8)
    for sock in socks:
        sock.transport.abort()


async def non_reader(server: Server) -> None:
    ws = await websockets.connect(server.realtime, max_queue=1, max_size=None)
    item = json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant",
        "content": [{"type": "input_text", "text": "x" * 30_000}]}})
    with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
        for _ in range(2000):
            await asyncio.wait_for(ws.send(item), 2)
    ws.transport.abort()


async def oversized(server: Server) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async with websockets.connect(server.realtime, max_size=None) as ws:
            await ws.send("x" * (3 * 1024 * 1024))
            await ws.recv()
            await ws.recv()


async def audio_flood(server: Server) -> None:
    chunk = base64.b64encode(os.urandom(48_000)).decode()  # 1 s at 24 kHz
    with contextlib.suppress(websockets.ConnectionClosed):
        async with websockets.connect(server.realtime, max_size=None) as ws:
            for _ in range(100):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await asyncio.sleep(1)


@functools.cache
def _huge_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4096, 4096), "white").save(buf, format="PNG")
    return data_url(buf.getvalue(), "image/png")


async def chat_bomb(server: Server) -> None:
    png = _huge_png()
    content = [{"type": "image_url", "image_url": {"url": png}}] * 40
    body = {"model": "ocr", "messages": [{"role": "user", "content": content}]}
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=30) as http:
            await http.post(f"{server.http}/v1/chat/completions", json=body)


async def hit_and_run(server: Server) -> None:
    ws = await websockets.connect(server.realtime, max_size=None)
    await ws.send(json.dumps(image_event(data_url(jpeg_bytes("RUN")), text="what?")))
    await ws.send(json.dumps({"type": "response.create"}))
    ws.transport.abort()


ABUSE = [response_flood, idle_sockets, non_reader, oversized, audio_flood, chat_bomb,
         hit_and_run]


async def abuse_loop(server: Server, kind: Any, until: float, figures: Figures) -> None:
    name = kind.__name__
    while time.monotonic() < until:
        with contextlib.suppress(Exception):
            await kind(server)
        figures.abuse[name] = figures.abuse.get(name, 0) + 1
        await asyncio.sleep(random.uniform(0.1, 1.0))


async def soak(duration_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "soak.yaml"
        config.write_text(CONFIG)
        server = Server(config)
        try:
            return await _run(server, duration_s)
        finally:
            server.stop()


async def _run(server: Server, duration_s: float) -> dict[str, Any]:
    warm = Figures()
    await good_client(server, time.monotonic() + 3, warm)  # models loaded, caches warm
    before = {"rss_mb": server.rss_mb(), **await server.health()}
    figures = Figures()
    began = time.monotonic()
    until = began + duration_s
    rss: list[tuple[float, float]] = []

    async def sample_rss() -> None:
        while time.monotonic() < until:
            rss.append((time.monotonic() - began, server.rss_mb()))
            await asyncio.sleep(10)

    await asyncio.gather(good_client(server, until, figures), sample_rss(),
                         *(abuse_loop(server, kind, until, figures) for kind in ABUSE))
    after, server_settle_s = await settled(server, before)
    lat = sorted(figures.latencies)
    return {
        "duration_s": duration_s, "asked": figures.asked, "right": figures.right,
        "right_pct": 100 * figures.right / max(1, figures.asked),
        "p50_s": statistics.median(lat) if lat else None,
        "p95_s": lat[int(0.95 * (len(lat) - 1))] if lat else None,
        "wrong": figures.wrong[:5], "abuse_runs": figures.abuse, "settle_s": server_settle_s,
        "rss_before_mb": before["rss_mb"], "rss_after_mb": after["rss_mb"],
        "rss_growth_pct": round(100 * (after["rss_mb"] / before["rss_mb"] - 1), 1),
        "rss_by_minute_mb": _by_minute(rss),
        "rss_max_mb": max((mb for _, mb in rss), default=None),
        "loop_lag_after_ms": after.get("loop_lag_ms"),
        "tasks_before": before.get("tasks"), "tasks_after": after.get("tasks"),
        "sessions_after": after["sessions"], "status_after": after["status"],
    }


async def settled(server: Server, before: dict[str, Any],
                  limit_s: float = 8) -> tuple[dict[str, Any], float]:
    """The server's figures once slow-client closes and idle sockets have drained (no session
    left, status ok, the task count back within 2 of ``before``), or after ``limit_s``; and
    the seconds that took."""
    began = time.monotonic()
    while True:
        health = await server.health()
        waited = time.monotonic() - began
        if waited >= limit_s or (health["sessions"] == 0 and health["status"] == "ok" and
                                 health.get("tasks", 0) <= before.get("tasks", 0) + 2):
            return {"rss_mb": server.rss_mb(), **health}, round(waited, 2)
        await asyncio.sleep(0.25)


def _by_minute(samples: list[tuple[float, float]]) -> list[float]:
    """The median RSS of each minute's samples (abuse comes in bursts; the median is the level)."""
    minutes: dict[int, list[float]] = {}
    for t, mb in samples:
        minutes.setdefault(int(t // 60), []).append(mb)
    return [round(statistics.median(v)) for _, v in sorted(minutes.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    result = asyncio.run(soak(args.minutes * 60))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
