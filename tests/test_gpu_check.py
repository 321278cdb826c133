"""scripts/gpu_check.py, which a new GPU machine runs first, run here on a CPU with a tiny
checkpoint of a real architecture: the same script, the same engine, as a person runs it (its
``main``, in this process: its imports are this worker's already)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.tiny import build
from scripts import gpu_check


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_a_tiny_checkpoint(tmp_path: Path) -> None:
    source = build("qwen2-vl", tmp_path / "qwen2-vl")
    out = tmp_path / "check.json"
    gpu_check.main(["--family", "qwen2-vl", "--source", str(source), "--dtype", "float32",
                    "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["load_s"] > 0
    assert len(result["runs"]) == 3
    for run in result["runs"]:
        assert 0 < run["ttft_s"] <= run["total_s"] and isinstance(run["text"], str)
        assert run["text"]


def test_gpu_check_refuses_without_cuda_unless_told_cpu() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--family", "qwen2-vl", "--source", "/nowhere"])
