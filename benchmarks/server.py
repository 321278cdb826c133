"""The gateway under test, in its own process so its CPU and memory can be read from /proc.

``python -m benchmarks.server [--no-decode]``: the echo handler over the fake engine.
``python -m benchmarks.server --embedded [CONFIG.yaml]``: the embedded default (real CPU models,
built-in plugins by entry point), optionally with a config file (handler and model options)."""

from __future__ import annotations

import asyncio
import sys

from agent.config import Config, HandlerConfig, ProfileConfig, ServerConfig, load_config
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakePlugin
from agent.uvicorn_server import running


def echo(decode: bool) -> Runtime:
    config = Config(
        server=ServerConfig(max_frames_per_s=10_000, max_sessions=1000),
        handlers={"echo": HandlerConfig(options={"decode": decode})},
        profiles={"default": ProfileConfig(handlers=["echo"], live=True)},
    )
    return Runtime.build(config, get_plugin_manager([FakePlugin()]))


def embedded(path: str | None) -> Runtime:
    config = load_config(path)
    config = config.model_copy(update={"server": ServerConfig(max_sessions=1000)})
    return Runtime.build(config, get_plugin_manager())


async def main(args: list[str]) -> None:
    if args[:1] == ["--embedded"]:
        runtime = embedded(args[1] if len(args) > 1 else None)
    else:
        runtime = echo(decode=args != ["--no-decode"])
    async with running(runtime) as address:
        print(f"PORT {address.port}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
