"""What vLLM's model code calls and a CPU-only torch build lacks, put back in vLLM's worker.

vLLM 0.32's MiniCPM-V 2.5+ resampler (``Resampler2_5.forward``, which MiniCPM-V 2.6 and
MiniCPM-o 2.6 use) asks ``torch.cuda.is_current_stream_capturing()`` at every call; on a
CPU-only torch that raises ``RuntimeError: Tried to instantiate dummy base class
_cuda_isCurrentStreamCapturing``. Nothing captures a CUDA stream on a CPU, so the answer is
``False``. The vLLM engine names :class:`CpuWorkerExtension` as vLLM's ``worker_extension_cls``
on CPU: vLLM imports it in its engine process (started with ``spawn``), which installs this.

Also there: the engine process's exit skips the interpreter's last cyclic garbage collection
over everything vLLM, torch and the model left (2.7 s of a 2.8 s engine close measured here,
every close), by freezing the heap at exit, as vLLM 0.32 itself does on ROCm after a clean
shutdown; the process's memory goes back to the system either way.
"""

from __future__ import annotations

import atexit
import gc
from typing import Any


def install() -> None:
    """Make ``torch.cuda.is_current_stream_capturing()`` answer ``False`` where torch has no
    CUDA (idempotent; a torch with CUDA is left alone)."""
    import torch

    cuda: Any = torch.cuda
    try:
        cuda.is_current_stream_capturing()
    except RuntimeError:  # the dummy binding of a CPU-only build
        cuda.is_current_stream_capturing = _not_capturing


def _not_capturing() -> bool:
    return False


class CpuWorkerExtension:
    """vLLM's ``worker_extension_cls`` on CPU: no methods, only the import's side effect."""


install()
atexit.register(gc.freeze)
