"""Watch firings POSTed to a webhook (a watch's ``webhook``; off unless ``server.webhooks``).

The URL is checked when the watch is set, and each try checks it again as fetching a media URL
does (``agent.fetch``): its host resolved once, every address public unless
``server.fetch_allow_hosts`` lists it, the connection made to the checked address. A firing is
one task of its own, off the session's path: up to ``TRIES`` tries of ``TIMEOUT_S`` each,
``BACKOFF_S`` doubling between them, a 2xx answer is success, redirects are not followed. Posts
to one URL go in the order of the firings; at most ``MAX_IN_FLIGHT`` per session, a newer one
drops the oldest (counted). After the last failed try the session is told (``WebhookFailed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from agent.config import ServerConfig
from agent.errors import InvalidRequest, StreamAgentError, WebhookFailed
from agent.fetch import Fetcher
from agent.watches import Firing, Watch

log = logging.getLogger(__name__)
TRIES = 3
TIMEOUT_S = 5.0
"""One try: resolving, connecting, sending and the answer's status line."""
BACKOFF_S = 0.5
"""The wait before the second try; it doubles before each next one."""
MAX_IN_FLIGHT = 8
"""Firings one session may have on their way; a newer one drops the oldest."""
Tell = Callable[[StreamAgentError], Awaitable[None]]
"""How the session shows a webhook that failed (an ``error`` event)."""


def payload(firing: Firing, session_id: str) -> dict[str, Any]:
    """What a firing POSTs: the watch, the session, the media time, what fired, when."""
    return {"watch": firing.watch.id, "session": session_id,
            "window_start_ms": round(firing.start * 1000),
            "window_end_ms": round(firing.end * 1000), "text": firing.watch.says(),
            "fired_at": time.time()}


class Webhooks:
    """One session's webhook posts: ``check`` watches before they are set, ``post`` each
    firing, ``close`` at the end."""

    def __init__(self, server: ServerConfig, session_id: str, tell: Tell) -> None:
        self.fetcher = (Fetcher(0, TIMEOUT_S, 0, server.fetch_allow_hosts)
                        if server.webhooks else None)
        self.session_id = session_id
        self.tell = tell
        self.posted = self.failed = self.dropped = 0
        self._posts: deque[asyncio.Task[None]] = deque()
        self._order: dict[str, asyncio.Lock] = {}
        self._client: httpx.AsyncClient | None = None

    def check(self, watches: tuple[Watch, ...], where: str) -> None:
        """Raise ``InvalidRequest`` naming a watch's ``webhook`` this server refuses. A host
        given by name is resolved and checked at each post (resolving here would block)."""
        for i, watch in enumerate(watches):
            if watch.webhook is None:
                continue
            param = f"{where}.streamagent.watches.{i}.webhook"
            if self.fetcher is None:
                raise InvalidRequest(f"watch {watch.id!r}: webhooks are off on this server "
                                     "(server.webhooks)", param=param)
            try:
                host = urllib.parse.urlsplit(watch.webhook).hostname or ""
                if _is_address(host) or not host:
                    self.fetcher.target(watch.webhook, param)
            except (StreamAgentError, ValueError) as exc:
                why = getattr(exc, "message", str(exc))
                raise InvalidRequest(f"watch {watch.id!r}: webhook refused: {why} "
                                     "(server.fetch_allow_hosts)", param=param) from None

    def post(self, firing: Firing) -> None:
        """POST ``firing`` to its watch's webhook, if it has one, in a task of its own."""
        url = firing.watch.webhook
        if url is None or self.fetcher is None:
            return
        while len(self._posts) >= MAX_IN_FLIGHT:
            self._posts.popleft().cancel()
            self.dropped += 1
            log.warning("session %s: %d webhook posts on their way; the oldest is dropped",
                        self.session_id, MAX_IN_FLIGHT)
        lock = self._order.setdefault(url, asyncio.Lock())
        task = asyncio.create_task(self._deliver(firing.watch, url, lock,
                                                 payload(firing, self.session_id)),
                                   name=f"webhook-{firing.watch.id}")
        self._posts.append(task)
        task.add_done_callback(self._done)

    async def close(self) -> None:
        tasks = list(self._posts)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        if self.posted or self.failed or self.dropped:
            log.info("session %s webhooks: %d posted, %d failed, %d dropped", self.session_id,
                     self.posted, self.failed, self.dropped)

    def _done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._posts.remove(task)
        if not self._posts:
            self._order.clear()

    async def _deliver(self, watch: Watch, url: str, lock: asyncio.Lock,
                       body: dict[str, Any]) -> None:
        async with lock:  # in the order of the firings (asyncio's locks are fair)
            why = ""
            for n in range(TRIES):
                if n:
                    await asyncio.sleep(BACKOFF_S * 2 ** (n - 1))
                try:
                    why = await asyncio.wait_for(self._try(url, body), TIMEOUT_S)
                except TimeoutError:
                    why = f"no answer within {TIMEOUT_S:g} s"
                if not why:
                    self.posted += 1
                    return
                log.warning("webhook of watch %r, try %d of %d: %s", watch.id, n + 1, TRIES, why)
        self.failed += 1
        error = WebhookFailed(f"watch {watch.id!r}: POST to webhook {url[:200]} failed "
                              f"{TRIES} times: {why}")
        try:
            await self.tell(error)
        except Exception:  # the session is going: the log has it
            log.exception("session %s: cannot report a failed webhook", self.session_id)

    async def _try(self, url: str, body: dict[str, Any]) -> str:
        """One try: ``""`` on a 2xx answer, else why not."""
        assert self.fetcher is not None
        try:
            to = await asyncio.to_thread(self.fetcher.target, url, "webhook")
        except StreamAgentError as exc:
            return exc.message
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        try:
            response = await self._client.post(to.url, json=body, headers={"Host": to.host},
                                               timeout=TIMEOUT_S,
                                               extensions={"sni_hostname": to.sni})
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "" if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"


def _is_address(host: str) -> bool:
    """Whether ``host`` is an IP address, not a name (checking it needs no DNS)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
