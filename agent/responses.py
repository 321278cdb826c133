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
from agent.engine import Usage, total_usage
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
        self.usage: list[Usage] = []
        """The usage of every model call made for this response (filled by the handlers)."""
        self._cancel_requested = False
        self._running = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def cancel(self) -> None:
        """A task cancelled before it starts never runs, so it would send nothing (no
        ``response.done``) and clean nothing up: until ``run`` starts, only mark it."""
        self._cancel_requested = True
        if self.task is not None and self._running:
            self.task.cancel()

    async def run(self, deltas: AsyncIterator[str], eager: bool) -> str:
        """Send the whole response; with ``eager=False`` nothing is sent unless text comes."""
        reraise, self._running = False, True
        try:
            if eager:
                await self._start()
            if self._cancel_requested:  # cancelled before it started
                raise asyncio.CancelledError
            async for delta in deltas:
                if delta:
                    await self._delta(delta)
            status = "completed"
        except asyncio.CancelledError:
            status = "cancelled"
            reraise = not self._cancel_requested  # cancelled from above: end, then go on up
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
        if self.started:  # every response.created gets its response.done
            await self._finish(status)
        self.status = status
        metrics.responses.inc(status=status)
        if reraise:
            raise asyncio.CancelledError
        return self.text

    def _tokens(self) -> tuple[int, int]:
        """(output, input) tokens as the engines counted them; engines that count none (the
        embedded CPU models) are counted by their text deltas."""
        total = total_usage(self.usage)
        output = total.completion_tokens
        return len(self.parts) if output is None else output, total.prompt_tokens or 0

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
        details = None if status == "completed" else {"type": status, "reason": status}
        if status == "completed" and total_usage(self.usage).finish_reason == "length":
            status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
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
        if status == "cancelled":
            reason = "client_cancelled" if self._cancel_requested else "handler_stopped"
            details = {"type": "cancelled", "reason": reason}
        resp = events.response_object(self.id, status, self.metadata, [item], details,
                                      *self._tokens())
        await self.send(events.event("response.done", response=resp))
