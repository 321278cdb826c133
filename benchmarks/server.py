"""The gateway under test, in its own process so its CPU and memory can be read from /proc.

Runs the real gateway with the echo handler (``decode`` on or off) over the fake engine."""

from __future__ import annotations

import asyncio
import sys

from agent.config import Config, HandlerConfig, ProfileConfig, ServerConfig
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.serve import running
from agent.testing import FakePlugin


async def main(decode: bool) -> None:
    config = Config(
        server=ServerConfig(max_frames_per_s=10_000, max_sessions=1000),
        handlers={"echo": HandlerConfig(options={"decode": decode})},
        profiles={"default": ProfileConfig(handlers=["echo"], live=True)},
    )
    runtime = Runtime.build(config, get_plugin_manager([FakePlugin()]))
    async with running(runtime) as address:
        print(f"PORT {address.port}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(decode=sys.argv[1:] != ["--no-decode"]))
