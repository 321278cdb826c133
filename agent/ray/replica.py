"""A model replica on Ray Serve: ``ModelServer``, a deployment wrapping one engine.

The engine class is injected (by kind, from the plugins installed in the replica, or as a
class), loaded in the replica, and its start-up is bounded by a timeout. ``generate`` streams;
a cancelled call closes the engine's stream, which aborts generation. ``check_health`` fails
when the engine is dead. ``agent.ray.apps.model_app`` wraps it in ``serve.deployment``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

from ray import serve

from agent.config import ModelConfig
from agent.engine import Engine, ModelRequest
from agent.errors import ConfigError, EngineError
from agent.heap import HeapTrimmer
from agent.options import check_options
from agent.parts import Part
from agent.pool import guarded_stream, healthy, scheduler_for
from agent.ray.hop import PackedRequest, batches, unpack

log = logging.getLogger(__name__)
ADAPTERS_PER_REPLICA = 8
SESSIONS_PER_REPLICA = 256
"""Sessions a replica is known by to Serve's routers (``session_affinity``), least recent out."""
SESSION = "session:"
"""The prefix of a multiplexed model id that names a session, not a LoRA adapter."""
HEAP_TRIM_INTERVAL_S = 2.0


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
                pm.register(load_plugin(spec))
            kinds = collect(pm).engines
            if config.engine not in kinds:
                raise ConfigError(f"model {name!r} uses engine {config.engine!r}; engines "
                                  f"installed in this replica: {sorted(kinds)}")
            engine_cls = kinds[config.engine]
        check_options(engine_cls.options_model, config.options, f"models.{name}.options")
        self.name = name
        self.stream_interval_s = stream_interval_s
        self.adapters: list[str] = []
        """LoRA adapters this replica has been routed (most recent last)."""
        self.sessions: list[str] = []
        """Sessions routed here by affinity (most recent last, at most
        ``SESSIONS_PER_REPLICA``)."""
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
                       ) -> AsyncGenerator[tuple[Part, ...], None]:
        """The engine's parts in batches, one per streaming item: text joined every
        ``stream_interval_s`` (the first part at once), other parts as they come."""
        bare = request.request if isinstance(request, PackedRequest) else request
        async with self.scheduler.slot(bare.session, patient=bare.live):
            if isinstance(request, PackedRequest):
                request = await asyncio.to_thread(unpack, request)
            if adapter := serve.get_multiplexed_model_id():
                await self.adapter(adapter)
            stream = batches(guarded_stream(self.engine, request), self.stream_interval_s)
            try:
                async with contextlib.aclosing(stream):
                    async for batch in stream:
                        yield batch
            finally:
                self.heap.mark()

    @serve.multiplexed(  # type: ignore[untyped-decorator]
        max_num_models_per_replica=ADAPTERS_PER_REPLICA + SESSIONS_PER_REPLICA)
    async def adapter(self, model_id: str) -> str:
        """Serve's model multiplexing, for two kinds of stickiness. A LoRA adapter: the gateway
        sends a request with option ``lora`` as ``multiplexed_model_id``, and Serve routes it
        to a replica that has served that adapter, so each adapter is loaded (by the engine, on
        first use) on few replicas instead of all. A session (``session:ID``, for a model with
        ``session_affinity``): its calls go to the replica that holds its prefix cache, and to
        another (computing the prompt afresh) when that one is gone or full."""
        if model_id.startswith(SESSION):
            kept = [s for s in self.sessions if s != model_id][1 - SESSIONS_PER_REPLICA:]
            self.sessions = [*kept, model_id]
        else:
            kept = [a for a in self.adapters if a != model_id][1 - ADAPTERS_PER_REPLICA:]
            self.adapters = [*kept, model_id]
        return model_id

    async def limits(self) -> dict[str, Any]:
        """What the gateway needs to know of the model: the engine's pixel budget (to shrink
        pictures), if any, and whether a session's calls stick to one replica."""
        max_pixels = getattr(self.engine, "max_pixels", None)
        return {"max_pixels": int(max_pixels) if isinstance(max_pixels, int) else None,
                "affinity": self.engine.config.sticky()}

    async def stats(self) -> dict[str, Any]:
        """Engine counters, for tests and operators (``generated``, ``active`` if kept)."""
        return {k: v for k, v in vars(self.engine).items() if isinstance(v, int | float)}

    async def where(self) -> dict[str, Any]:
        """The Ray node and Serve replica serving this call, and the LoRA adapters it was
        routed (for operators and tests)."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(),
                "replica": serve.get_replica_context().replica_id.unique_id,
                "adapters": list(self.adapters),
                "sessions": [s.removeprefix(SESSION) for s in self.sessions]}

    async def ping(self) -> bool:
        await self.engine.check_health()
        return True

    async def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy (an engine that
        is not loaded or closed, or a request stuck past ``stuck_after_s``)."""
        await self.engine.check_health()
        if not await healthy(self.engine, self.scheduler):
            raise EngineError(f"model {self.name!r} is unhealthy")


def load_plugin(spec: str) -> object:
    """A plugin given as ``module:object`` (a class is instantiated), for replicas and the
    gateway to register beside the installed entry points."""
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj() if isinstance(obj, type) else obj
