from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from agent.config import Config
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import ServerThread
from agent.uvicorn_server import Address

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Ray reads this at import: without it, nodes of a multi-node test cluster advertise this
# host's LAN address; with it, every Ray address stays on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def embedded() -> Iterator[Address]:
    """The embedded default (real CPU models, built-in plugins by entry point) on a free port."""
    runtime = Runtime.build(Config(), get_plugin_manager())
    with ServerThread(runtime) as address:
        yield address


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run `make setup` (it installs Debian packages)")
    return path
