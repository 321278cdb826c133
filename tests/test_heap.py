"""Freed memory goes back to the OS: the trimmer returns a fragmented heap's free space, and
the gateway trims after a session ends."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
import threading
import weakref
from typing import Any

import pytest
import websockets

from agent import gateway
from agent.protocols.realtime.session import RealtimeSession
from agent.testing import fake_runtime
from agent.uvicorn_server import running

FRAGMENT = """
import asyncio, json
from pathlib import Path
from agent.heap import HeapTrimmer

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

async def main():
    # 4000 x 64 KiB from the heap (under glibc's mmap threshold), every 100th kept: the kept
    # ones pin the heap, so freeing the rest returns nothing by itself
    blocks = [bytearray(b"x" * 65536) for _ in range(4000)]
    kept = blocks[::100]
    del blocks
    freed = rss_mb()
    trimmer = HeapTrimmer(0.01)
    watch = asyncio.create_task(trimmer.watch())
    trimmer.mark()
    while trimmer.trims == 0:
        await asyncio.sleep(0.01)
    watch.cancel()
    print(json.dumps({"freed": freed, "trimmed": rss_mb(), "kept": len(kept)}))

asyncio.run(main())
"""


def test_the_trimmer_returns_a_fragmented_heap_to_the_os() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("malloc_trim is glibc's")
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True,
                         check=True, timeout=60)
    rss = json.loads(out.stdout)
    assert rss["freed"] > 200, rss  # 250 MiB allocated, 2.5 MiB of it still alive
    assert rss["trimmed"] < rss["freed"] - 150, rss


class Trimmed(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "heap trimmed" in record.getMessage():
            self.seen.set()  # the trimmer logs on the event loop


async def test_an_ended_session_is_followed_by_a_trim_that_frees_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The session ends in reference cycles (its socket, its tasks): the trim's collection
    frees it, whenever the collector's own schedule would have."""
    alive: weakref.WeakSet[RealtimeSession] = weakref.WeakSet()

    class Tracked(RealtimeSession):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            alive.add(self)

    monkeypatch.setattr(gateway, "RealtimeSession", Tracked)
    logger = logging.getLogger("agent.heap")
    trimmed = Trimmed()
    logger.addHandler(trimmed)
    logger.setLevel(logging.DEBUG)
    runtime = fake_runtime()
    runtime.config.server.heap_trim_interval_s = 0.05
    gc.disable()  # only the trim collects
    try:
        async with running(runtime) as address:
            async with websockets.connect(f"{address.ws}/v1/realtime") as ws:
                await ws.recv()
                assert len(alive) == 1
            await asyncio.wait_for(trimmed.seen.wait(), 10)
            assert len(alive) == 0
    finally:
        gc.enable()
        logger.removeHandler(trimmed)
        logger.setLevel(logging.NOTSET)


async def test_no_trim_without_an_ended_session(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.heap")
    runtime = fake_runtime()
    runtime.config.server.heap_trim_interval_s = 0.05
    async with running(runtime):
        await asyncio.sleep(0.5)
    # this server's trimmer logs on this thread; a server another test left on its own thread
    # (a session-scoped one) may trim meanwhile
    here = threading.get_ident()
    assert not any("heap trimmed" in r.message for r in caplog.records if r.thread == here)
