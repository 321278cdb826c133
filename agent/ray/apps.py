"""Ray Serve applications for serve configs: typed ``args``, the builders, the gateway ingress.

``import_path: agent.ray.apps:model_app`` / ``agent.ray.apps:gateway_app``. A model that spans
GPUs (vLLM with ``tensor_parallel_size > 1``) gets the matching placement group from its config
(``placement``).

The top of the package's layering: this imports ``replica``, ``pool`` and ``proxy``; none of
them imports it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from agent import metrics
from agent.config import Config, ModelConfig
from agent.ray.pool import RayPool
from agent.ray.proxy import MessageLimit
from agent.ray.replica import ModelServer, load_plugin


class ModelAppArgs(BaseModel):
    """``args`` of a model application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")
    name: str
    model: ModelConfig
    start_timeout_s: float = 600
    plugins: list[str] = []
    """Extra plugins, as ``module:object``, beside the installed entry points."""
    stream_interval_s: float = Field(default=0.03, ge=0)
    """Deltas are sent to the gateway at most this often (the first at once); 0: each."""


class GatewayAppArgs(BaseModel):
    """``args`` of the gateway application: the streamagent config, minus the models it
    reaches through Serve (``models``: their application names)."""

    model_config = ConfigDict(extra="forbid")
    config: Config = Config()
    models: list[str]
    plugins: list[str] = []
    """Extra plugins, as ``module:object``, beside the installed entry points."""
    first_delta_timeout_s: float = Field(default=60.0, gt=0)
    """A model call that yields nothing for this long fails with ``engine_error``."""
    live_wait_s: float = Field(default=1.0, gt=0)
    """A live window's call that yields nothing for this long fails with ``engine_error`` as
    soon as Serve shows no running replica of its model (a node lost, a replica restarting)."""
    jpeg_quality: int = Field(default=90, ge=0, le=100)
    """Pictures cross to model replicas as JPEG of this quality, at the model's pixel
    budget; 0 sends raw pixels."""


def model_app(args: dict[str, Any]) -> Any:
    a = ModelAppArgs.model_validate(args)
    deployment: Any = serve.deployment(ModelServer, name=a.name, **placement(a.model))
    return deployment.bind(a.name, a.model.model_dump(), None, a.start_timeout_s, a.plugins,
                           a.stream_interval_s)


def gateway_app(args: dict[str, Any]) -> Any:
    a = GatewayAppArgs.model_validate(args)
    # the config's shutdown timeout, unless the deployment's own options in serve_config set it
    deployment: Any = serve.deployment(
        serve.ingress()(GatewayServer), name="gateway",
        graceful_shutdown_timeout_s=a.config.server.shutdown_timeout_s)
    return deployment.bind(a.config.model_dump(), a.models, a.plugins, a.first_delta_timeout_s,
                           a.jpeg_quality, a.live_wait_s)


class GatewayServer:
    """The realtime gateway as a Serve ingress (behind Serve's HTTP proxy)."""

    def __init__(self, config: dict[str, Any], models: list[str],
                 plugins: list[str] | None = None, first_delta_timeout_s: float = 60.0,
                 jpeg_quality: int = 90, live_wait_s: float = 1.0) -> None:
        from agent.gateway import Gateway
        from agent.plugins import collect, get_plugin_manager
        from agent.runtime import Runtime, with_model_profiles

        metrics.enable_ray()
        pm = get_plugin_manager()
        for spec in plugins or []:
            pm.register(load_plugin(spec))
        cfg = with_model_profiles(Config.model_validate(config))
        runtime = Runtime(cfg, collect(pm), RayPool(models, first_delta_timeout_s,
                                                     jpeg_quality=jpeg_quality,
                                                     live_wait_s=live_wait_s))
        self.gateway = Gateway(runtime)
        self.gateway.ready.set()

    async def where(self) -> dict[str, Any]:
        """This replica's node, id and open session ids (for operators and tests)."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(),
                "replica": serve.get_replica_context().replica_id.unique_id,
                "sessions": sorted(s.id for s in self.gateway.sessions)}

    def __serve_build_asgi_app__(self) -> Any:
        return MessageLimit(self.gateway.app(),
                            self.gateway.runtime.config.server.max_message_bytes)


def placement(model: ModelConfig) -> dict[str, Any]:
    """Deployment options for a model spread over several GPUs of one node: vLLM with
    ``options.tensor_parallel_size: N > 1`` gets a placement group of one CPU bundle for the
    replica and N one-GPU bundles, packed on one node (vLLM runs its workers in them with its
    Ray executor). Leave ``num_gpus`` out of that model's ``ray_actor_options``."""
    tp = int(model.options.get("tensor_parallel_size", 1))
    if model.engine != "vllm" or tp <= 1:
        return {}
    return {"ray_actor_options": {"num_cpus": 1, "num_gpus": 0},
            "placement_group_bundles": [{"CPU": 1, "GPU": 0}] + [{"GPU": 1}] * tp,
            "placement_group_strategy": "STRICT_PACK"}
