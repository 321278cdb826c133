"""Session affinity on Ray: the cache hit rate of live sessions over two model replicas.

Runs inside benchmarks/ray_bench.py's local Ray cluster (Serve started): a tiny Qwen2.5-VL on
the transformers engine (its session KV cache on, plugins/hf/kv_reuse.py) deployed with two
replicas, once with ``session_affinity`` (its default) and once without, and a gateway over
it. Four sessions stream live windows at once, each a new picture, with the session's
timeline (memory on), through the realtime endpoint (``benchmarks.memory.stream``). Figure:
prompt tokens served from a cache over prompt tokens, for every window after each session's
first (the first has nothing to reuse anywhere).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from agent.config import Config, GatingConfig, HandlerConfig, ProfileConfig
from agent.plugins import collect, get_plugin_manager
from agent.runtime import Runtime
from agent.uvicorn_server import running
from benchmarks.memory import checkpoint, model, stream

SESSIONS = 4
WINDOWS = 12


async def hit_rates() -> dict[str, float]:
    """Cache hit rate of the sessions' windows after their first, affinity on and off."""
    from ray import serve

    from agent.ray.pool import RayPool
    from agent.ray.replica import ModelServer

    source = checkpoint("qwen2.5-vl", Path(tempfile.mkdtemp()))
    out = {}
    for name, sticky in (("affinity on", None), ("affinity off", False)):
        config = model("transformers", source).model_copy(update={"session_affinity": sticky})
        app = serve.deployment(ModelServer, name="m", num_replicas=2,
                               ray_actor_options={"num_cpus": 0})
        serve.run(app.bind("m", config.model_dump()), name="m", route_prefix="/models/m")
        gateway = Config(handlers={"describe": HandlerConfig(gating=GatingConfig(enabled=False))},
                         profiles={"default": ProfileConfig(handlers=["describe"],
                                                            models={"describe": "m"})})
        try:
            async with running(Runtime(gateway, collect(get_plugin_manager()),
                                       RayPool(["m"]))) as address:
                runs = await asyncio.gather(*(stream(address.realtime, WINDOWS, True)
                                              for _ in range(SESSIONS)))
        finally:
            serve.delete("m")
        later = [s for run in runs for s in run.seconds[1:]]
        out[name] = sum(s.cached for s in later) / max(1, sum(s.prompt for s in later))
        print(f"ray session {name}: {100 * out[name]:.0f}% of prompt tokens from a cache",
              flush=True)
    return out


def rows(rates: dict[str, Any]) -> str:
    """The figure's table rows for docs/performance.md."""
    return "\n".join(f"| {SESSIONS} live sessions over 2 replicas (tiny Qwen2.5-VL, "
                     f"transformers), {name}: prompt tokens from a cache after each session's "
                     f"first window | {100 * rate:.0f}% | |" for name, rate in rates.items())
