"""`make bench`: live sessions that start together (a restart, a reconnect storm).

N sessions connect at once to the embedded default, each showing its own word on a static scene
(640x480 JPEG, 4 frames a second, sampled at 1 fps). Reports the time from the first frame to
each session's first reading of its word (median and the last session's), how many sessions
never read it within the deadline, and how many ``model_overloaded`` errors live windows got
(none should: a live window that finds the model's queue full waits for room).

    python -m benchmarks.burst --sessions 48 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import websockets

from benchmarks.capacity import WORDS, Server, jpeg_url
from benchmarks.run import machine

DEADLINE_S = 20.0


async def one(url: str, word: str, frame: str, start: asyncio.Event) -> dict[str, Any]:
    """One session: connect, wait for the others, show ``word``; when was it first read?"""
    out: dict[str, Any] = {"read_s": None, "overloaded": 0}
    async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update",
                                  "session": {"streamagent": {"live": True}}}))
        await start.wait()
        began = time.perf_counter()

        async def frames() -> None:
            for i in range(int(DEADLINE_S * 4)):
                await ws.send('{"type":"conversation.item.create","item":{"type":"message",'
                              '"role":"user","content":[{"type":"input_image","image_url":'
                              f'"{frame}","streamagent":{{"timestamp":{i / 4 + 0.01:.3f}}}}}]}}}}')
                await asyncio.sleep(0.25)

        sender = asyncio.create_task(frames())
        try:
            async with asyncio.timeout(DEADLINE_S):
                async for raw in ws:
                    event = json.loads(raw)
                    if event["type"] == "error":
                        out["overloaded"] += event["error"]["code"] == "model_overloaded"
                    elif (event["type"] == "response.output_text.delta"
                          and word in event["delta"].upper()):
                        out["read_s"] = time.perf_counter() - began
                        break
        except TimeoutError:
            pass
        finally:
            sender.cancel()
    return out


async def burst(server: Server, n: int) -> dict[str, Any]:
    start = asyncio.Event()
    words = [WORDS[i % len(WORDS)] for i in range(n)]
    frames = {w: jpeg_url(w) for w in set(words)}
    tasks = [asyncio.create_task(one(server.url, w, frames[w], start)) for w in words]
    await asyncio.sleep(2)  # every session connected and set up
    start.set()
    results = await asyncio.gather(*tasks)
    read = sorted(r["read_s"] for r in results if r["read_s"] is not None)
    return {"sessions": n, "read": len(read), "median_s": statistics.median(read) if read else None,
            "last_s": read[-1] if len(read) == n else None,
            "overloaded": sum(r["overloaded"] for r in results)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[48, 64])
    args = parser.parse_args()
    print(f"burst of live sessions on the embedded default ({machine()})")
    for n in args.sessions:
        server = Server(None)
        try:
            r = await burst(server, n)
        finally:
            server.stop()
        last = f"{r['last_s']:.1f} s" if r["last_s"] is not None else "never (some unread)"
        median = f"{r['median_s']:.1f} s" if r["median_s"] is not None else "-"
        print(f"{n} sessions: {r['read']}/{n} read their word; first reading median {median}, "
              f"last {last}; model_overloaded errors: {r['overloaded']}")


if __name__ == "__main__":
    asyncio.run(main())
