"""What vLLM's model code calls and a CPU-only torch build lacks, put back in vLLM's worker.

vLLM 0.32's MiniCPM-V 2.5+ resampler (``Resampler2_5.forward``, which MiniCPM-V 2.6 and
MiniCPM-o 2.6 use) asks ``torch.cuda.is_current_stream_capturing()`` at every call; on a
CPU-only torch that raises ``RuntimeError: Tried to instantiate dummy base class
_cuda_isCurrentStreamCapturing``. Nothing captures a CUDA stream on a CPU, so the answer is
``False``. The vLLM engine names :class:`CpuWorkerExtension` as vLLM's ``worker_extension_cls``
on CPU: vLLM imports it in its engine process (started with ``spawn``), which installs this.
"""

from __future__ import annotations

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
