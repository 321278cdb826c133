"""One response's lifecycle on the wire, in the order OpenAI Realtime clients expect:

``response.created``, ``response.output_item.added``, ``response.content_part.added``,
N x ``response.output_text.delta``, ``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done``, ``response.done`` (completed | cancelled | failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agent import events, metrics
from agent.errors import EngineError, StreamAgentError

log = logging.getLogger(__name__)
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ResponseRun:
    """Streams one handler's deltas as one response. ``cancel()`` ends it as ``cancelled``."""

    def __init__(self, send: Send, metadata: dict[str, str]) -> None:
        self.send = send
        self.metadata = metadata
        self.id = events.new_id("resp")
        self.item_id = events.new_id("item")
        self.parts: list[str] = []
        self.status = "in_progress"
        self.started = False
        self.task: asyncio.Task[str] | None = None
        self._cancel_requested = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def cancel(self) -> None:
        self._cancel_requested = True
        if self.task is not None:
            self.task.cancel()

    async def run(self, deltas: AsyncIterator[str], eager: bool) -> str:
        """Send the whole response; with ``eager=False`` nothing is sent unless text comes."""
        try:
            if eager:
                await self._start()
            async for delta in deltas:
                if delta:
                    await self._delta(delta)
            status = "completed"
        except asyncio.CancelledError:
            if not self._cancel_requested:
                raise
            status = "cancelled"
        except StreamAgentError as exc:
            await self.send(events.error(exc))
            status = "failed"
        except Exception as exc:
            log.exception("response %s failed", self.id)
            await self.send(events.error(EngineError(f"handler failed: {exc}")))
            status = "failed"
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        if self.started:
            await self._finish(status)
        self.status = status
        metrics.responses.inc(status=status)
        return self.text

    async def _start(self) -> None:
        self.started = True
        resp = events.response_object(self.id, "in_progress", self.metadata, [])
        await self.send(events.event("response.created", response=resp))
        await self.send(
            events.event(
                "response.output_item.added",
                response_id=self.id,
                output_index=0,
                item=events.message_item(self.item_id, "", "in_progress") | {"content": []},
            )
        )
        await self.send(
            events.event(
                "response.content_part.added",
                response_id=self.id,
                item_id=self.item_id,
                output_index=0,
                content_index=0,
                part={"type": "output_text", "text": ""},
            )
        )

    async def _delta(self, delta: str) -> None:
        if not self.started:
            await self._start()
        self.parts.append(delta)
        await self.send(
            events.event(
                "response.output_text.delta",
                response_id=self.id,
                item_id=self.item_id,
                output_index=0,
                content_index=0,
                delta=delta,
            )
        )

    async def _finish(self, status: str) -> None:
        text, where = self.text, {"response_id": self.id, "output_index": 0}
        item_status = "completed" if status == "completed" else "incomplete"
        item = events.message_item(self.item_id, text, item_status)
        await self.send(
            events.event("response.output_text.done", **where, item_id=self.item_id,
                         content_index=0, text=text)
        )
        await self.send(
            events.event("response.content_part.done", **where, item_id=self.item_id,
                         content_index=0, part={"type": "output_text", "text": text})
        )
        await self.send(events.event("response.output_item.done", **where, item=item))
        details = None if status == "completed" else {"type": status, "reason": status}
        if status == "cancelled":
            details = {"type": "cancelled", "reason": "client_cancelled"}
        resp = events.response_object(
            self.id, status, self.metadata, [item], details, output_tokens=len(self.parts)
        )
        await self.send(events.event("response.done", response=resp))
