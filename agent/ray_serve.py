"""The model pool on Ray Serve: one deployment per model, the gateway streams through handles.

- ``ModelServer``: a deployment wrapping one engine. The engine class is injected (by kind,
  from the plugins installed in the replica, or as a class), loaded in the replica, and its
  start-up is bounded by a timeout. ``generate`` streams; a cancelled call closes the engine's
  stream, which aborts generation. ``check_health`` fails when the engine is dead.
- ``RayPool``: the ``Pool`` interface over deployment handles (``options(stream=True)``).
- ``model_app`` / ``gateway_app``: typed application builders for ``serve_config.yaml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel, ConfigDict

from agent.config import Config, ModelConfig
from agent.engine import Engine, ModelRequest
from agent.errors import ConfigError, EngineError, UnknownModel
from agent.pool import Pool

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 5.0


class ModelServer:
    """One model in a Serve replica (wrapped with ``serve.deployment`` by ``model_app``)."""

    async def __init__(self, name: str, model: dict[str, Any],  # type: ignore[misc]
                       engine_cls: type[Engine] | None = None,
                       start_timeout_s: float = 600) -> None:
        config = ModelConfig.model_validate(model)
        if engine_cls is None:
            from agent.plugins import collect, get_plugin_manager

            kinds = collect(get_plugin_manager()).engines
            if config.engine not in kinds:
                raise ConfigError(f"model {name!r} uses engine {config.engine!r}; engines "
                                  f"installed in this replica: {sorted(kinds)}")
            engine_cls = kinds[config.engine]
        self.name = name
        self.engine = engine_cls(name, config)
        try:
            await asyncio.wait_for(self.engine.start(), start_timeout_s)
        except Exception as exc:
            raise ConfigError(f"model {name!r} failed to load: {exc}") from exc
        log.info("model %s ready (engine %s)", name, config.engine)

    async def generate(self, request: ModelRequest) -> AsyncGenerator[str, None]:
        async with contextlib.aclosing(self.engine.stream(request)) as stream:
            async for text in stream:
                yield text

    async def stats(self) -> dict[str, Any]:
        """Engine counters, for tests and operators (``generated``, ``active`` if kept)."""
        return {k: v for k, v in vars(self.engine).items() if isinstance(v, int | float)}

    async def ping(self) -> bool:
        await self.engine.check_health()
        return True

    async def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy."""
        await self.engine.check_health()


class RayPool(Pool):
    """Streams from Serve applications, one per model, named after the model."""

    def __init__(self, names: list[str]) -> None:
        from ray import serve

        self._names = sorted(names)
        self.handles = {name: serve.get_app_handle(name).options(stream=True)
                        for name in names}

    @property
    def names(self) -> list[str]:
        return self._names

    async def stream(self, model: str, request: ModelRequest) -> AsyncGenerator[str, None]:
        import ray.exceptions

        handle = self.handles.get(model)
        if handle is None:
            raise UnknownModel(f"no model named {model!r}; the pool has {self.names}")
        gen: Any = handle.generate.remote(request)
        try:
            async for text in gen:
                yield text
        except (ray.exceptions.RayError, RuntimeError) as exc:
            raise EngineError(f"model {model!r} failed: {_reason(exc)}") from exc
        finally:
            gen.cancel()  # reaches the replica, which closes the engine's stream

    async def health(self) -> dict[str, bool]:
        from ray import serve

        async def one(name: str) -> bool:
            try:
                ping = serve.get_app_handle(name).ping.remote()
                return bool(await asyncio.wait_for(ping, HEALTH_TIMEOUT_S))
            except Exception:
                return False

        names = self.names
        return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))


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


class ModelAppArgs(BaseModel):
    """``args`` of a model application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")
    name: str
    model: ModelConfig
    start_timeout_s: float = 600


class GatewayAppArgs(BaseModel):
    """``args`` of the gateway application: the streamagent config, minus the models it
    reaches through Serve (``models``: their application names)."""

    model_config = ConfigDict(extra="forbid")
    config: Config = Config()
    models: list[str]
    plugins: list[str] = []
    """Extra plugins, as ``module:object``, beside the installed entry points."""


def model_app(args: dict[str, Any]) -> Any:
    from ray import serve

    a = ModelAppArgs.model_validate(args)
    deployment: Any = serve.deployment(ModelServer, name=a.name)
    return deployment.bind(a.name, a.model.model_dump(), None, a.start_timeout_s)


def gateway_app(args: dict[str, Any]) -> Any:
    from ray import serve

    a = GatewayAppArgs.model_validate(args)
    deployment: Any = serve.deployment(serve.ingress()(GatewayServer), name="gateway")
    return deployment.bind(a.config.model_dump(), a.models, a.plugins)


class GatewayServer:
    """The realtime gateway as a Serve ingress (behind Serve's HTTP proxy)."""

    def __init__(self, config: dict[str, Any], models: list[str],
                 plugins: list[str] | None = None) -> None:
        from agent.plugins import collect, get_plugin_manager
        from agent.runtime import Runtime, with_model_profiles
        from agent.server import Gateway

        pm = get_plugin_manager()
        for spec in plugins or []:
            pm.register(_load_object(spec))
        cfg = with_model_profiles(Config.model_validate(config))
        runtime = Runtime(cfg, collect(pm), RayPool(models))
        self.gateway = Gateway(runtime)
        self.gateway.ready.set()

    def __serve_build_asgi_app__(self) -> Any:
        return self.gateway.app()
