"""The ASGI middlewares of the gateway inside Ray Serve, at the ASGI level (no Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.ray.proxy import CloseOrphanedWebsockets, MessageLimit, middlewares

Message = dict[str, Any]


class Socket:
    """The server side of one websocket: messages the client sends, messages the app sent."""

    def __init__(self, *incoming: Message) -> None:
        self.incoming = [{"type": "websocket.connect"}, *incoming,
                         {"type": "websocket.disconnect", "code": 1000}]
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return self.incoming.pop(0)

    async def send(self, message: Message) -> None:
        self.sent.append(message)


SCOPE = {"type": "websocket", "path": "/v1/realtime"}


async def test_a_replica_lost_after_accept_closes_with_1012() -> None:
    async def dies(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise RuntimeError("ActorDiedError")  # what the proxy sees when the replica dies

    sock = Socket()
    with pytest.raises(RuntimeError):
        await CloseOrphanedWebsockets(dies)(SCOPE, sock.receive, sock.send)
    assert sock.sent[-1]["type"] == "websocket.close" and sock.sent[-1]["code"] == 1012


async def test_closed_or_refused_sockets_get_no_second_close() -> None:
    async def closes(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    async def client_left(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async def refuses(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # denied before the upgrade: never accepted

    for app, count in ((closes, 2), (client_left, 1), (refuses, 0)):
        sock = Socket({"type": "websocket.receive", "text": "{}"})
        await CloseOrphanedWebsockets(app)(SCOPE, sock.receive, sock.send)
        assert len(sock.sent) == count, (app.__name__, sock.sent)
    assert [m.cls for m in middlewares()] == [CloseOrphanedWebsockets]


async def test_message_over_the_limit_closes_1009_and_the_app_sees_a_disconnect() -> None:
    seen: list[Message] = []

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            seen.append(message)
            await send({"type": "websocket.send", "text": "ok"})
        seen.append(message)
        await send({"type": "websocket.close", "code": 1000})  # swallowed: already closed

    sock = Socket({"type": "websocket.receive", "text": "x" * 100},
                  {"type": "websocket.receive", "bytes": b"y" * 101},
                  {"type": "websocket.receive", "text": "never read"})
    await MessageLimit(echo, max_bytes=100)(SCOPE, sock.receive, sock.send)
    assert [m["type"] for m in seen] == ["websocket.receive", "websocket.disconnect"]
    assert [m["type"] for m in sock.sent] == ["websocket.accept", "websocket.send",
                                              "websocket.close"]
    assert sock.sent[-1]["code"] == 1009
