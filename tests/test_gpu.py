"""Real checkpoints on a CUDA GPU. Skipped where there is none (this project's CI machines);
run on a GPU machine with STREAMAGENT_GPU_MODELS="qwen2-vl=/models/Qwen2-VL-2B-Instruct,...".
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MODELS = [tuple(pair.split("=", 1)) for pair in
          os.environ.get("STREAMAGENT_GPU_MODELS", "").split(",") if "=" in pair]


@pytest.mark.skipif(not MODELS, reason="set STREAMAGENT_GPU_MODELS=family=source,...")
@pytest.mark.parametrize(("family", "source"), MODELS)
async def test_real_checkpoint_streams_on_cuda(family: str, source: str) -> None:
    from scripts.gpu_check import check

    result = await check(family, source, os.environ.get("STREAMAGENT_GPU_ENGINE",
                                                        "transformers"), "bfloat16")
    runs = result["runs"]
    assert isinstance(runs, list) and all(r["ttft_s"] is not None for r in runs)
    print(result)
