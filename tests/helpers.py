"""A small realtime client for tests: send events, collect server events until one arrives."""

from __future__ import annotations

import asyncio
import base64
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


async def sdk_answer(address: Any, model: str, image: bytes, question: str,
                     session: dict[str, Any] | None = None) -> tuple[list[str], Any]:
    """Ask through the official openai SDK's realtime client, unchanged: a picture and a
    question (after ``session.update`` with ``session``, if given); the text deltas and the
    ``response.done`` response."""
    from openai import AsyncOpenAI

    from agent.testing import data_url

    deltas: list[str] = []
    async with AsyncOpenAI(api_key="any", websocket_base_url=f"{address.ws}/v1") as client, \
            client.realtime.connect(model=model) as conn:
        if session is not None:
            await conn.session.update(session=session)
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_image", "image_url": data_url(image)},
                        {"type": "input_text", "text": question}]})
        await conn.response.create()
        async for event in conn:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "error":
                raise AssertionError(event.error)
            elif event.type == "response.done":
                return deltas, event.response
    raise AssertionError("no response.done")


async def ask_to_talk(client: Client, audio: bool, max_output_tokens: int | None = None,
                      ) -> None:
    """Ask a model for a long answer (to cancel it mid-way): after a second of buzz in which no
    utterance is found, so the question goes to the model anyway, or with a picture; up to
    ``max_output_tokens`` (the model's own limit when ``None``)."""
    from agent.testing import data_url, image_event, jpeg_bytes

    if audio:
        pcm = base64.b64encode(b"\x10\x20" * 24000).decode()
        await client.send({"type": "input_audio_buffer.append", "audio": pcm})
        await client.send({"type": "input_audio_buffer.commit"})
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "say a lot"}]}})
    else:
        await client.send(image_event(data_url(jpeg_bytes("x")), text="say a lot"))
    create: dict[str, Any] = {"type": "response.create"}
    if max_output_tokens is not None:
        create["response"] = {"max_output_tokens": max_output_tokens}
    await client.send(create)


def assert_windows_told(replies: list[Any], handler: str, spans: list[tuple[int, int]]) -> None:
    """Every window of ``spans`` was answered by ``handler``, or the client was told it was let
    go for a newer one (``windows_superseded``; a busy handler answers the newest window). The
    first and the last window are always answered, in order."""
    mine = [r for r in replies if r.handler == handler]
    got = [(r.start_ms, r.end_ms) for r in mine]
    assert got and got[0] == spans[0] and got[-1] == spans[-1], got
    assert got == [s for s in spans if s in got], f"answered out of order: {got}"
    assert int(mine[-1].metadata["windows_superseded"]) == len(spans) - len(got), (got, mine[-1])
