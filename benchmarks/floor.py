"""The ingest floor: a bare websocket server on the gateway's own server stack.

``python -m benchmarks.floor`` prints ``PORT n`` and serves ``/v1/realtime`` with an app that
accepts, sends one event (the clients wait for a first event, as they do for the gateway's
``session.created``), then receives every message, ``json.loads`` it and drops it.

Same stack as the gateway: uvicorn with the websockets-sansio protocol and the same uvicorn
config (``agent.uvicorn_server.uvicorn_config``: websocket protocol, limits, ping, no deflate),
a Starlette app with a ``WebSocketRoute``. What the gateway spends on top of this (validation,
the signature check, sampling, decoding one frame a second, sessions, answers) is what
``benchmarks.run`` reports as the ratio to the floor.

``python -m benchmarks.floor --echo`` also sends each message back twice, as it came: the bytes
of the gateway's item echo (``conversation.item.added`` and ``.done``) without its JSON work,
to tell what the echo itself costs (docs/performance.md, "Ingest: where the time went").

Only the stable part of ``agent`` is used (the uvicorn config and ``bind``); the app is
handed to ``uvicorn_config`` through a stand-in with an ``app()`` method, as a gateway has.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

FIRST_EVENT = '{"type":"session.created","session":{}}'


async def drop(ws: WebSocket, echoes: int = 0) -> None:
    """Parse every message's JSON; send it back ``echoes`` times as it came."""
    await ws.accept()
    await ws.send_text(FIRST_EVENT)
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        json.loads(text if text is not None else message.get("bytes") or b"")
        for _ in range(echoes):
            await ws.send_text(text or "")


async def echo(ws: WebSocket) -> None:
    """The floor that also echoes each message twice, as the gateway echoes an item."""
    await drop(ws, echoes=2)


class Bare:
    """Stands where ``uvicorn_config`` expects a gateway: only ``app()`` is read."""

    def __init__(self, route: Callable[[WebSocket], Awaitable[None]] = drop) -> None:
        self.route = route

    def app(self) -> ASGIApp:
        return Starlette(routes=[WebSocketRoute("/v1/realtime", self.route),
                                 WebSocketRoute("/v1/realtime/", self.route)])


async def main() -> None:
    from agent.config import ServerConfig
    from agent.uvicorn_server import bind, uvicorn_config

    sock = bind("127.0.0.1", 0)
    bare = Bare(echo if "--echo" in sys.argv[1:] else drop)
    server = uvicorn.Server(uvicorn_config(bare, ServerConfig()))  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main())
