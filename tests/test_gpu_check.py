"""scripts/gpu_check.py, which a new GPU machine runs first, run here on a CPU with a tiny
checkpoint of a real architecture: the same script, the same engine, as a person runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.tiny import build

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_a_tiny_checkpoint(tmp_path: Path) -> None:
    source = build("qwen2-vl", tmp_path / "qwen2-vl")
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--family",
                           "qwen2-vl", "--source", str(source), "--dtype", "float32",
                           "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
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
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--family",
                           "qwen2-vl", "--source", "/nowhere"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "no CUDA device" in done.stderr
