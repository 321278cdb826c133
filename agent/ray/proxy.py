"""ASGI middlewares for the gateway inside Ray Serve.

``MessageLimit`` wraps the gateway app in its replicas: Serve's proxy takes websocket messages of
up to 16 MiB (its uvicorn's default), so the gateway's own ``max_message_bytes`` is enforced
here, with the same close code as on uvicorn (1009).

``CloseOrphanedWebsockets`` is for Serve's HTTP proxies: a websocket whose gateway replica died
is closed with a close frame (1012, "service restart": reconnect), not dropped (1006).

Serve's proxy ends the ASGI call without a ``websocket.close`` when the replica behind an open
websocket dies. Enable this on every node that runs a proxy, in the environment of ``ray start``
(the proxy reads it at start-up)::

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=agent.ray.proxy:middlewares
"""

from __future__ import annotations

import contextlib

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLOSE_SERVICE_RESTART = 1012
CLOSE_TOO_BIG = 1009


class MessageLimit:
    """Closes a websocket (1009) whose client sent a message over ``max_bytes``; the app sees
    a disconnect."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return

        closed = False

        async def limited_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive":
                data = message.get("bytes") or message.get("text") or ""
                size = len(data) if isinstance(data, bytes) else len(data.encode())
                if size > self.max_bytes:
                    closed = True
                    await send({"type": "websocket.close", "code": CLOSE_TOO_BIG,
                                "reason": f"message over {self.max_bytes} bytes"})
                    return {"type": "websocket.disconnect", "code": CLOSE_TOO_BIG}
            return message

        async def guarded_send(message: Message) -> None:
            if not closed:  # the app may still write or close: the socket is gone
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


class CloseOrphanedWebsockets:
    """Sends ``websocket.close`` (1012) when the app returns or fails on an accepted socket
    that neither side has closed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        state = {"accepted": False, "closed": False}

        async def watched_send(message: Message) -> None:
            if message["type"] == "websocket.accept":
                state["accepted"] = True
            elif message["type"] == "websocket.close":
                state["closed"] = True
            await send(message)

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                state["closed"] = True
            return message

        try:
            await self.app(scope, watched_receive, watched_send)
        finally:
            if state["accepted"] and not state["closed"]:
                with contextlib.suppress(Exception):  # the client may be gone too
                    await send({"type": "websocket.close", "code": CLOSE_SERVICE_RESTART,
                                "reason": "gateway replica lost; reconnect"})


def middlewares() -> list[Middleware]:
    """The value of ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` points here."""
    return [Middleware(CloseOrphanedWebsockets)]
