from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(scope="session", autouse=True)
def vllm_engines_fork() -> Iterator[None]:
    """vLLM's engine processes forked from a server that imported vLLM once (tests/vllm_fork.py),
    in workers that collected vLLM's tests (a worker that never imported vLLM is left as is)."""
    if "vllm" not in sys.modules:
        yield
        return
    from tests.vllm_fork import fork_engines

    with pytest.MonkeyPatch.context() as patch:
        fork_engines(patch)
        yield


@pytest.fixture
def root_logging() -> Iterator[None]:
    """For tests that run ``serve``, which sets up logging (the root logger's handlers): put
    them back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run `make setup` (it installs Debian packages)")
    return path


# Under pytest-xdist (`make test` runs `-n 2 --dist loadscope`) a module's tests stay on one
# worker, so its module-scoped fixtures (engines, checkpoints, servers, clusters) are built
# once. Some modules also share a worker, one after the other, in the order listed:
SERIAL = {
    # the Ray clusters of these never overlap
    "ray": ["test_ray", "test_serve_deploy", "test_caption_ray"],
    # the longest chain of vLLM engines, one after the other (test_vllm's live windows and
    # test_ray_cluster's lost node run beside no engine of theirs; another module's vLLM start
    # on the other worker may overlap them: their checks hold under load, a superseded window
    # is told); test_ray_cluster runs first, beside small modules
    "engines": ["test_ray_cluster", "test_model_matrix", "test_vllm", "test_memory"],
}
ORDER = ["engines", None, "test_gpu_bench", "test_engine_contract", "ray", "test_transformers",
         "test_upstream", "test_install", "test_gpu_check", "test_e2e_media", "test_ask",
         "test_soak", "test_minicpm", "test_browser"]
"""The order groups are handed out in: None stands for every group not listed (the small
modules, in xdist's order: most tests first); then the longer ones, longest first (about 30,
30, 160, 60, 45, 20, 10, 45, 10, 20, 10 and 15 s on a quiet machine; "engines" about 330).
A worker takes its next group when it starts the last test of the one it has, so the run
ends on modules of many short tests. `make test` prints the 25 slowest (--durations)."""
GROUP_OF = {module: group for group, modules in SERIAL.items() for module in modules}


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    def rank(scope: str) -> int:
        return ORDER.index(scope) if scope in ORDER else ORDER.index(None)

    class ModuleGroups(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return GROUP_OF.get(_module(nodeid), _module(nodeid))

        def _assign_work_unit(self, node: Any) -> None:
            for scope in sorted(self.workqueue, key=rank):  # stable: xdist's order within a rank
                self.workqueue.move_to_end(scope)
            scope = next(iter(self.workqueue))
            if scope in SERIAL:  # its modules in the order listed
                tests = self.workqueue[scope]
                self.workqueue[scope] = dict(sorted(
                    tests.items(), key=lambda test: SERIAL[scope].index(_module(test[0]))))
            super()._assign_work_unit(node)

    return ModuleGroups(config, log)
