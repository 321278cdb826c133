"""A session's outgoing events: bounded in count and in bytes, and a client that stops reading
ends its session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from agent.protocols.jsontext import dumps

if TYPE_CHECKING:
    from agent.conversation import Conversation

log = logging.getLogger(__name__)
OUTBOX_SIZE = 256
CLOSE_POLICY = 1008
Render = Callable[[dict[str, Any]], dict[str, Any] | None]


class Outbox:
    """At most ``OUTBOX_SIZE`` events and ``max_bytes`` of their JSON wait for the socket (one
    event larger than that waits alone). A sender waits while there is no room; once it has
    waited ``stall_s``, ``stalled`` is set (the session ends and the gateway closes the socket
    with ``close_code``), and from then on events are dropped."""

    def __init__(self, session_id: str, stall_s: float, max_bytes: int = 16 << 20,
                 render: Render | None = None) -> None:
        self.session_id = session_id
        self.render = render
        """The dialect's form of an event (``None``: not sent), applied before it is queued."""
        self.stall_s = stall_s
        self.max_bytes = max_bytes
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(OUTBOX_SIZE + 1)  # + the end
        self.bytes = 0
        self._taken = asyncio.Event()
        self.stalled = asyncio.Event()
        self.ended = asyncio.Event()
        """Set when the writer has sent everything before ``end()`` (or the outbox closed)."""
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""

    async def put(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        if self.render is not None:
            rendered = self.render(event)
            if rendered is None:
                return
            event = rendered
        text = dumps(event)
        if not self._room(len(text)) and not await self._wait_for_room(len(text)):
            return
        self.queue.put_nowait(text)
        self.bytes += len(text)

    async def _wait_for_room(self, size: int) -> bool:
        """Wait until ``size`` fits, at most ``stall_s`` (the outbox stalls then); whether it
        fits and the outbox is still open."""
        try:
            async with asyncio.timeout(self.stall_s):
                while not self._room(size):
                    self._taken.clear()
                    await self._taken.wait()
        except TimeoutError:
            self._stall(f"client did not read its events for {self.stall_s:g} s")
            return False
        return not self.closed

    def _room(self, size: int) -> bool:
        if self.queue.qsize() >= OUTBOX_SIZE:
            return False
        return self.queue.empty() or self.bytes + size <= self.max_bytes

    def _stall(self, reason: str) -> None:
        if not self.stalled.is_set():
            log.warning("session %s: %s; closing it", self.session_id, reason)
            self.close_code, self.close_reason = CLOSE_POLICY, reason
            self.closed = True
            self.stalled.set()

    def end(self) -> None:
        """No more events: the writer sends those waiting, then stops (``ended``)."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)

    def close(self) -> None:
        """No more events; those waiting are dropped (the client has gone or the session is
        over), so a session kept alive by a reference cycle holds none of them."""
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.bytes = 0
        self.ended.set()

    def qsize(self) -> int:
        return self.queue.qsize()

    async def write(self, send_text: Callable[[str], Awaitable[None]]) -> None:
        """Send events as the socket takes them (the session's writer task)."""
        while True:
            text = await self.queue.get()
            if text is None:
                self.ended.set()
                return
            self.bytes -= len(text)
            self._taken.set()
            await send_text(text)


async def serve(conversation: Conversation, outbox: Outbox,
                send_text: Callable[[str], Awaitable[None]],
                reader: Coroutine[Any, Any, None]) -> None:
    """Run a conversation's socket: its reader, its outbox's writer, and a watch on a client
    that stops reading. Whichever ends first ends the rest, and everything the conversation
    started is cancelled."""
    sid = conversation.id
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(outbox.write(send_text), name=f"writer-{sid}"),
        asyncio.create_task(reader, name=f"reader-{sid}"),
        asyncio.create_task(outbox.stalled.wait(), name=f"stalled-{sid}")]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        outbox.close()
        for task in tasks:
            task.cancel()
        await conversation.close()
        await asyncio.gather(*tasks, return_exceptions=True)
