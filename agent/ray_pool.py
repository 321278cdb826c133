"""The model pool on Ray Serve: one deployment per model, the gateway streams through handles.

- ``ModelServer``: a deployment wrapping one engine. The engine class is injected (by kind,
  from the plugins installed in the replica, or as a class), loaded in the replica, and its
  start-up is bounded by a timeout. ``generate`` streams; a cancelled call closes the engine's
  stream, which aborts generation. ``check_health`` fails when the engine is dead.
- ``RayPool``: the ``Pool`` interface over deployment handles (``options(stream=True)``).
- ``model_app`` / ``gateway_app``: typed application builders for ``serve_config.yaml``
  (defined in ``agent.ray_apps``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from ray import serve

from agent.config import ModelConfig
from agent.engine import Engine, ModelRequest
from agent.errors import ConfigError, EngineError, UnknownModel
from agent.heap import HeapTrimmer
from agent.pool import Pool, guarded_stream, healthy, scheduler_for
from agent.ray_hop import PackedRequest, coalesce, has_pictures, pack, unpack

log = logging.getLogger(__name__)
ADAPTERS_PER_REPLICA = 8
HEAP_TRIM_INTERVAL_S = 2.0
HEALTH_TIMEOUT_S = 5.0
"""A health ping that takes longer counts as a failure."""
HEALTH_WAIT_S = 0.2
"""``/healthz`` waits at most this long for a probe in flight, then answers what it knows."""


class ModelServer:
    """One model in a Serve replica (wrapped with ``serve.deployment`` by ``model_app``)."""

    async def __init__(self, name: str, model: dict[str, Any],  # type: ignore[misc]
                       engine_cls: type[Engine] | None = None,
                       start_timeout_s: float = 600, plugins: list[str] | None = None,
                       stream_interval_s: float = 0.03) -> None:
        config = ModelConfig.model_validate(model)
        if engine_cls is None:
            from agent.plugins import collect, get_plugin_manager

            pm = get_plugin_manager()
            for spec in plugins or []:
                pm.register(_load_object(spec))
            kinds = collect(pm).engines
            if config.engine not in kinds:
                raise ConfigError(f"model {name!r} uses engine {config.engine!r}; engines "
                                  f"installed in this replica: {sorted(kinds)}")
            engine_cls = kinds[config.engine]
        self.name = name
        self.stream_interval_s = stream_interval_s
        self.adapters: list[str] = []
        """LoRA adapters this replica has been routed (most recent last)."""
        self.engine = engine_cls(name, config)
        self.scheduler = scheduler_for(self.engine)  # the replica's fair, bounded queue
        self.heap = HeapTrimmer(HEAP_TRIM_INTERVAL_S)  # unpacked frames: as in the gateway
        self._trimming = asyncio.create_task(self.heap.watch(), name="heap-trim")
        try:
            await asyncio.wait_for(self.engine.start(), start_timeout_s)
        except Exception as exc:
            raise ConfigError(f"model {name!r} failed to load: {exc}") from exc
        gc.freeze()  # the loaded model: the trimmer's collections walk only what comes after
        log.info("model %s ready (engine %s)", name, config.engine)

    async def generate(self, request: ModelRequest | PackedRequest,
                       ) -> AsyncGenerator[str, None]:
        """The engine's deltas, coalesced every ``stream_interval_s`` (the first at once)."""
        key = (request.request if isinstance(request, PackedRequest) else request).session
        async with self.scheduler.slot(key):
            if isinstance(request, PackedRequest):
                request = await asyncio.to_thread(unpack, request)
            if adapter := serve.get_multiplexed_model_id():
                await self.adapter(adapter)
            stream = coalesce(guarded_stream(self.engine, request), self.stream_interval_s)
            try:
                async with contextlib.aclosing(stream):
                    async for text in stream:
                        yield text
            finally:
                self.heap.mark()

    @serve.multiplexed(max_num_models_per_replica=ADAPTERS_PER_REPLICA)  # type: ignore[untyped-decorator]
    async def adapter(self, adapter_id: str) -> str:
        """Serve's model multiplexing for LoRA adapters: the gateway sends a request with option
        ``lora`` as ``multiplexed_model_id``, and Serve routes it to a replica that has served
        that adapter, so each adapter is loaded (by the engine, on first use) on few replicas
        instead of all. Serve forgets the least recent past ``ADAPTERS_PER_REPLICA``."""
        self.adapters = [a for a in self.adapters if a != adapter_id][1 - ADAPTERS_PER_REPLICA:]
        self.adapters.append(adapter_id)
        return adapter_id

    async def limits(self) -> dict[str, Any]:
        """What the gateway needs to shrink requests: the engine's pixel budget, if any."""
        max_pixels = getattr(self.engine, "max_pixels", None)
        return {"max_pixels": int(max_pixels) if isinstance(max_pixels, int) else None}

    async def stats(self) -> dict[str, Any]:
        """Engine counters, for tests and operators (``generated``, ``active`` if kept)."""
        return {k: v for k, v in vars(self.engine).items() if isinstance(v, int | float)}

    async def where(self) -> dict[str, Any]:
        """The Ray node and Serve replica serving this call, and the LoRA adapters it was
        routed (for operators and tests)."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(),
                "replica": serve.get_replica_context().replica_id.unique_id,
                "adapters": list(self.adapters)}

    async def ping(self) -> bool:
        await self.engine.check_health()
        return True

    async def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy (an engine that
        is not loaded or closed, or a request stuck past ``stuck_after_s``)."""
        await self.engine.check_health()
        if not await healthy(self.engine, self.scheduler):
            raise EngineError(f"model {self.name!r} is unhealthy")


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

    async def stream(self, model: str, request: ModelRequest) -> AsyncGenerator[str, None]:
        import ray.exceptions

        handle = self.handles.get(model)
        if handle is None:
            raise UnknownModel(f"no model named {model!r}; the pool has {self.names}")
        lora = request.options.get("lora")
        if lora:  # LoRA adapters are multiplexed: Serve routes to a replica that has it
            handle = handle.options(multiplexed_model_id=str(lora))
        gen: Any = handle.generate.remote(await self._shrink(model, request))
        try:
            try:
                first = await asyncio.wait_for(anext(gen), self.first_delta_timeout_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise EngineError(f"model {model!r} did not answer within "
                                  f"{self.first_delta_timeout_s:g} s (no replica ready?)"
                                  ) from None
            yield first
            async for text in gen:
                yield text
        except (ray.exceptions.RayError, RuntimeError) as exc:
            raise EngineError(f"model {model!r} failed: {_reason(exc)}") from exc
        finally:
            gen.cancel()  # reaches the replica, which closes the engine's stream

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


def _load_object(spec: str) -> object:
    import importlib

    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj() if isinstance(obj, type) else obj


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# The application builders live in agent.ray_apps; serve configs name them here.
from agent.ray_apps import (  # noqa: E402
    GatewayAppArgs,
    GatewayServer,
    ModelAppArgs,
    gateway_app,
    model_app,
)

__all__ = ["GatewayAppArgs", "GatewayServer", "ModelAppArgs", "ModelServer", "RayPool",
           "gateway_app", "model_app"]
