"""One scheduler per model: N workers, a bounded queue, sessions served round-robin.

A request waits for a free worker in its session's line; when a worker frees up, the next
session in turn goes (round-robin), so one busy session cannot starve the others. A cancelled
waiter leaves at once. When ``max_queue`` requests already wait, the next is refused with
``Overloaded`` before any work is done; a patient request (a live window: its handler has at
most one in flight, so they are bounded by sessions x handlers) waits whatever the queue holds,
and does not count toward ``max_queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent import metrics
from agent.errors import Overloaded


@dataclass(slots=True)
class SchedulerStats:
    admitted: int = 0
    refused: int = 0
    cancelled_waiting: int = 0
    patient_past_limit: int = 0
    """Patient requests (live windows) that waited where ``max_queue`` would have refused."""


class Scheduler:
    def __init__(self, name: str, workers: int, max_queue: int) -> None:
        if workers < 1 or max_queue < 0:
            raise ValueError("a scheduler needs at least one worker and a queue of size >= 0")
        self.name = name
        self.workers = workers
        self.max_queue = max_queue
        self.stats = SchedulerStats()
        self._running: dict[int, float] = {}  # id(slot) -> start time (monotonic)
        self._lines: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._waiting = 0
        self._patient: set[asyncio.Future[None]] = set()  # waiters outside max_queue
        self._busy = 0  # workers held or granted to a waiter that has not resumed yet
        self._gauge()

    @property
    def running(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return self._waiting

    def oldest_running_s(self) -> float:
        """How long the longest-running request has run (0 when idle)."""
        if not self._running:
            return 0.0
        return time.monotonic() - min(self._running.values())

    @contextlib.asynccontextmanager
    async def slot(self, key: str, patient: bool = False) -> AsyncIterator[None]:
        """Hold one worker for the body; wait in ``key``'s line for it first (``patient``:
        even when ``max_queue`` requests already wait)."""
        await self._acquire(key, patient)
        token = object()
        self._running[id(token)] = time.monotonic()
        try:
            yield
        finally:
            del self._running[id(token)]
            self._busy -= 1
            self._grant_next()

    async def _acquire(self, key: str, patient: bool) -> None:
        if self._busy < self.workers and not self._waiting:
            self._busy += 1
            self.stats.admitted += 1
            metrics.model_queue_wait.observe(0.0, model=self.name)
            return
        if patient and self._waiting >= self.max_queue:
            self.stats.patient_past_limit += 1
        if not patient and self._waiting - len(self._patient) >= self.max_queue:
            self.stats.refused += 1
            raise Overloaded(
                f"model {self.name!r} is busy: {self._waiting} requests already wait for its "
                f"{self.workers} worker(s) (max_queue {self.max_queue}); try again shortly")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lines.setdefault(key, deque()).append(waiter)
        self._waiting += 1
        self._gauge()
        if patient:
            self._patient.add(waiter)
        began = time.monotonic()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted as we were cancelled
                self._busy -= 1
                self._grant_next()
            else:
                self._forget(key, waiter)
                self.stats.cancelled_waiting += 1
            raise
        self.stats.admitted += 1
        metrics.model_queue_wait.observe(time.monotonic() - began, model=self.name)

    def _gauge(self) -> None:
        metrics.model_queue_depth.set(self._waiting, model=self.name)

    def _forget(self, key: str, waiter: asyncio.Future[None]) -> None:
        line = self._lines.get(key)
        if line is not None and waiter in line:
            line.remove(waiter)
            self._waiting -= 1
            self._gauge()
            self._patient.discard(waiter)
            if not line:
                del self._lines[key]

    def _grant_next(self) -> None:
        """Give a free worker to the first waiter of the next session in turn."""
        while self._lines and self._busy < self.workers:
            key, line = next(iter(self._lines.items()))
            waiter = line.popleft()
            self._waiting -= 1
            self._gauge()
            self._patient.discard(waiter)
            del self._lines[key]
            if line:  # this session goes to the back of the round
                self._lines[key] = line
            if not waiter.done():
                waiter.set_result(None)
                self._busy += 1
