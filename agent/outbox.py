"""A session's outgoing events: bounded, and a client that stops reading ends its session."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)
OUTBOX_SIZE = 256
CLOSE_POLICY = 1008


class Outbox:
    """At most ``OUTBOX_SIZE`` events wait for the socket. A sender waits while it is full;
    once it has stayed full for ``stall_s``, ``stalled`` is set (the session ends and the
    gateway closes the socket with ``close_code``), and from then on events are dropped."""

    def __init__(self, session_id: str, stall_s: float) -> None:
        self.session_id = session_id
        self.stall_s = stall_s
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(OUTBOX_SIZE)
        self.stalled = asyncio.Event()
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""

    async def put(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(event)
            return
        except asyncio.QueueFull:
            pass
        try:
            await asyncio.wait_for(self.queue.put(event), self.stall_s)
        except TimeoutError:
            self._stall(f"client did not read its events for {self.stall_s:g} s")

    def _stall(self, reason: str) -> None:
        if not self.stalled.is_set():
            log.warning("session %s: %s; closing it", self.session_id, reason)
            self.close_code, self.close_reason = CLOSE_POLICY, reason
            self.closed = True
            self.stalled.set()

    def qsize(self) -> int:
        return self.queue.qsize()

    async def write(self, send_text: Callable[[str], Awaitable[None]]) -> None:
        """Send events as the socket takes them (the session's writer task)."""
        while True:
            event = await self.queue.get()
            await send_text(json.dumps(event))
