"""streamagent on Ray Serve: one package, its modules layered one way (no module imports one
that imports it back; tests/test_ray_hop.py checks):

- ``hop``: what crosses the gateway → replica hop (packed pictures, coalesced text); no Ray.
- ``proxy``: ASGI middlewares for the gateway's replicas and Serve's HTTP proxies; no Ray.
- ``replica``: ``ModelServer``, the deployment wrapping one engine (→ ``hop``).
- ``pool``: ``RayPool``, the gateway's ``Pool`` over the model applications (→ ``hop``).
- ``apps``: the serve-config applications, ``model_app`` / ``gateway_app`` and their ``args``,
  and the gateway ingress (→ ``replica``, ``pool``, ``proxy``).

Serve configs name the modules (``agent.ray.apps:model_app``,
``agent.ray.proxy:middlewares``). The names below are re-exported lazily: importing this
package (or ``hop``, ``proxy``) does not import Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.ray.apps import GatewayAppArgs, GatewayServer, ModelAppArgs, gateway_app, model_app
    from agent.ray.hop import PackedRequest, batches, coalesce, pack, unpack
    from agent.ray.pool import RayPool
    from agent.ray.proxy import CloseOrphanedWebsockets, MessageLimit, middlewares
    from agent.ray.replica import ModelServer

__all__ = [
    "CloseOrphanedWebsockets", "GatewayAppArgs", "GatewayServer", "MessageLimit",
    "ModelAppArgs", "ModelServer", "PackedRequest", "RayPool", "batches", "coalesce", "gateway_app",
    "middlewares", "model_app", "pack", "unpack",
]
_WHERE = {
    "GatewayAppArgs": "apps", "GatewayServer": "apps", "ModelAppArgs": "apps",
    "gateway_app": "apps", "model_app": "apps",
    "PackedRequest": "hop", "batches": "hop", "coalesce": "hop", "pack": "hop", "unpack": "hop",
    "RayPool": "pool",
    "CloseOrphanedWebsockets": "proxy", "MessageLimit": "proxy", "middlewares": "proxy",
    "ModelServer": "replica",
}
"""Each name's module, imported on first use."""


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
