"""A small realtime client for tests: send events, collect server events until one arrives."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets


class Client:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
        ws = await websockets.connect(url, max_size=None, **kwargs)
        client = cls(ws)
        created = await client.recv()
        assert created["type"] == "session.created", created
        return client

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.ws.send(event if isinstance(event, str) else json.dumps(event))

    async def recv(self, timeout: float = 15) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        assert "event_id" in event, event
        self.seen.append(event)
        return event

    async def until(self, type_: str, timeout: float = 15, **match: Any) -> list[dict[str, Any]]:
        """Events received up to and including the first of ``type_`` (matching ``match``)."""
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.recv(max(0.01, deadline - loop.time()))
            got.append(event)
            if event["type"] == type_ and all(event.get(k) == v for k, v in match.items()):
                return got

    async def error(self, timeout: float = 10) -> dict[str, Any]:
        return (await self.until("error", timeout))[-1]["error"]

    async def update(self, **streamagent: Any) -> dict[str, Any]:
        await self.send({"type": "session.update",
                         "session": {"type": "realtime", "streamagent": streamagent}})
        return (await self.until("session.updated"))[-1]["session"]

    async def close(self) -> None:
        await self.ws.close()


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["delta"] for e in events if e["type"] == "response.output_text.delta"]


def endpoint_from(proc: Any) -> str:
    """The realtime URL that `streamagent serve` prints (``proc`` has a text stdout pipe).
    vLLM logs to stdout too: over a hundred lines can come first."""
    for _ in range(1000):
        line = proc.stdout.readline()
        if "realtime endpoint:" in line:
            return str(line.split("realtime endpoint:")[1].strip())
    raise AssertionError("streamagent serve printed no realtime endpoint")
