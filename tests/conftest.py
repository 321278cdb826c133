from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from agent.config import Config
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.serve import Address
from agent.testing import ServerThread

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
