"""vLLM's engine processes in the tests: forked from a server that imported vLLM once.

On a CPU, vLLM starts each engine's process with ``spawn`` (vllm/platforms/cpu.py sets it),
and the new interpreter imports vLLM again before it loads anything: 12-14 s on this project's
2-core machine, most of a tiny checkpoint's start, and the suite starts about 16 engines. Here
a pytest worker starts them from a fork server (Python's ``forkserver``) that imported vLLM
once, so each start forks a process that has it. What a spawned process would have, kept:

- the environment of the moment it starts (vLLM sets variables around the start; a fork
  server's children would otherwise have the server's, from its first start);
- no OpenMP pool inherited: the server only imports, and never runs a parallel region, which
  is what makes fork unsafe after torch has computed.

What runs in the engine process is vLLM's own, unchanged; only how the process begins differs.
A served model outside the tests (``streamagent serve``, and ``vllm serve`` in test_upstream)
starts it with vLLM's spawn.
"""

from __future__ import annotations

import os
from multiprocessing.context import ForkServerContext, ForkServerProcess
from typing import Any

import pytest

PRELOAD = ["vllm.v1.engine.core", "vllm.v1.executor.uniproc_executor",
           "vllm.v1.worker.cpu_worker", "plugins.vllm_cpu"]
"""What the server imports once: the engine process's own imports."""


class _Process(ForkServerProcess):
    """A fork-server process that runs with the environment of the moment it was started."""

    def start(self) -> None:
        self._environ = dict(os.environ)
        super().start()

    def run(self) -> None:
        os.environ.clear()
        os.environ.update(self._environ)
        super().run()


class _Context(ForkServerContext):
    Process = _Process


CONTEXT = _Context()


def fork_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start vLLM's spawned processes from the preloaded fork server (see the module)."""
    from vllm.utils import system_utils
    from vllm.v1.engine import utils as engine_utils

    spawned = system_utils.get_mp_context

    def get_mp_context() -> Any:
        context = spawned()
        return CONTEXT if context.get_start_method() == "spawn" else context

    CONTEXT.set_forkserver_preload(PRELOAD)
    for module in (system_utils, engine_utils):
        monkeypatch.setattr(module, "get_mp_context", get_mp_context)
