"""The gateway's side of the model pool on Ray Serve: ``RayPool``, the ``Pool`` interface over
the deployment handles of the model applications (``options(stream=True)``), one per model,
named after it. The replicas behind them are ``agent.ray.replica.ModelServer``; pictures cross
packed (``agent.ray.hop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import ray.exceptions
from ray import serve

from agent.engine import ModelRequest
from agent.errors import EngineError, UnknownModel
from agent.parts import Part
from agent.pool import Pool
from agent.ray.hop import PackedRequest, has_pictures, pack

log = logging.getLogger(__name__)
REPLICA_LOST = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError,
                ray.exceptions.WorkerCrashedError)
"""A call failed because its replica is gone, not because the model failed."""
HEALTH_TIMEOUT_S = 5.0
"""A health ping that takes longer counts as a failure."""
HEALTH_WAIT_S = 0.2
"""``/healthz`` waits at most this long for a probe in flight, then answers what it knows."""


class RayPool(Pool):
    """Streams from Serve applications, one per model, named after the model.

    Handles are got once, here (getting one asks the Serve controller, and blocks). Every call
    has a deadline for its first delta (``first_delta_timeout_s``): while no replica can take it
    (a node lost, the model being rescheduled) the client gets an ``engine_error`` instead of a
    silent wait. Health is probed in the background and cached (``health()`` never waits on Ray
    for longer than ``HEALTH_WAIT_S``).
    """

    def __init__(self, names: list[str], first_delta_timeout_s: float = 60.0,
                 health_period_s: float = 2.0, jpeg_quality: int = 90) -> None:
        self._names = sorted(names)
        apps = {name: serve.get_app_handle(name) for name in names}
        self.handles = {name: h.options(stream=True) for name, h in apps.items()}
        self.probes = apps
        self.first_delta_timeout_s = first_delta_timeout_s
        self.health_period_s = health_period_s
        self._healthy: dict[str, float] = {}
        """Model -> monotonic time of its last good ping."""
        self._probe: asyncio.Task[None] | None = None
        self._probed_at = -1e9
        self.jpeg_quality = jpeg_quality
        """Pictures cross to replicas as JPEG of this quality (0: as raw pixels)."""
        self._limits: dict[str, dict[str, Any]] = {}

    @property
    def names(self) -> list[str]:
        return self._names

    async def stream(self, model: str, request: ModelRequest) -> AsyncGenerator[Part, None]:
        handle = self.handles.get(model)
        if handle is None:
            raise UnknownModel(f"no model named {model!r}; the pool has {self.names}")
        lora = request.options.get("lora")
        if lora:  # LoRA adapters are multiplexed: Serve routes to a replica that has it
            handle = handle.options(multiplexed_model_id=str(lora))
        gen, first = await self._first(model, handle, await self._shrink(model, request))
        if gen is None:
            return
        try:
            for part in first:
                yield part
            async for batch in gen:
                for part in batch:
                    yield part
        except (ray.exceptions.RayError, RuntimeError) as exc:
            raise EngineError(f"model {model!r} failed: {_reason(exc)}") from exc
        finally:
            gen.cancel()  # reaches the replica, which closes the engine's stream

    async def _first(self, model: str, handle: Any, request: ModelRequest | PackedRequest,
                     ) -> tuple[Any, Any]:
        """Start the call and wait for its first part, within ``first_delta_timeout_s``. A
        replica lost before it said anything (its node gone, its process dead) is tried once
        more, on whichever replica Serve routes to within what is left of the deadline; nothing
        was shown, so nothing is repeated. ``(None, None)``: the answer was empty."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.first_delta_timeout_s
        for attempt in (1, 2):
            gen: Any = handle.generate.remote(request)
            try:
                return gen, await asyncio.wait_for(anext(gen), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                gen.cancel()
                return None, None
            except TimeoutError:
                gen.cancel()
                raise EngineError(f"model {model!r} did not answer within "
                                  f"{self.first_delta_timeout_s:g} s (no replica ready?)"
                                  ) from None
            except (ray.exceptions.RayError, RuntimeError) as exc:
                gen.cancel()
                if attempt == 2 or not isinstance(exc, REPLICA_LOST):
                    raise EngineError(f"model {model!r} failed: {_reason(exc)}") from exc
                log.warning("model %s: its replica was lost before it answered (%s); trying "
                            "once more", model, _reason(exc))
            except BaseException:
                gen.cancel()
                raise
        raise AssertionError("unreachable")

    async def _shrink(self, model: str, request: ModelRequest) -> ModelRequest | PackedRequest:
        """Pictures downscaled to the model's budget and JPEG-encoded, off the event loop."""
        if not self.jpeg_quality or not has_pictures(request):
            return request
        if model not in self._limits:
            try:
                limits = await asyncio.wait_for(self.probes[model].limits.remote(),
                                                self.first_delta_timeout_s)
            except Exception as exc:
                raise EngineError(f"model {model!r} failed: {_reason(exc)}") from exc
            self._limits[model] = dict(limits)
        max_pixels = self._limits[model].get("max_pixels")
        return await asyncio.to_thread(pack, request, max_pixels, self.jpeg_quality)

    async def health(self) -> dict[str, bool]:
        """A model is healthy when its replicas answered a ping within three probe periods.

        Probes run in a background task, at most one per ``health_period_s``; this waits for a
        running probe at most ``HEALTH_WAIT_S``, so it answers at once even when the Serve
        controller or a model is unreachable."""
        now = time.monotonic()
        if (self._probe is None or self._probe.done()) and \
                now - self._probed_at >= self.health_period_s:
            self._probed_at = now
            self._probe = asyncio.create_task(self._probe_all(), name="ray-health")
        if self._probe is not None and not self._probe.done():
            await asyncio.wait({self._probe}, timeout=HEALTH_WAIT_S)
        fresh = time.monotonic() - 3 * max(self.health_period_s, HEALTH_TIMEOUT_S)
        return {n: self._healthy.get(n, -1e9) >= fresh for n in self._names}

    async def _probe_all(self) -> None:
        async def one(name: str) -> None:
            try:
                ok = await asyncio.wait_for(self.probes[name].ping.remote(), HEALTH_TIMEOUT_S)
            except Exception as exc:  # logged when a healthy model turns unhealthy
                was = self._healthy.pop(name, None)
                (log.warning if was else log.debug)("model %s failed its health ping: %s",
                                                    name, _reason(exc))
                return
            if ok:
                self._healthy[name] = time.monotonic()

        await asyncio.gather(*(one(n) for n in self._names))

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
