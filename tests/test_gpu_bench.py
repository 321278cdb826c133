"""scripts/gpu_bench.py end to end on a CPU with tiny sizes: every step it runs on a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_gpu_bench_small_on_cpu_writes_its_table(tmp_path: Path) -> None:
    """In this process (on a CPU the script runs each engine in its own process only on a
    GPU): its imports are this worker's already."""
    from scripts import gpu_bench

    out = tmp_path / "bench.md"
    # one model: the second (qwen2.5-vl-7b) runs the same steps at small size; both engines,
    # every step of the script
    gpu_bench.main(["--device", "cpu", "--small", "--out", str(out), "--workdir",
                    str(tmp_path / "ckpt"), "--budget-s", "240", "--models", "qwen2-vl-2b"])
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["model"], r["engine"]) for r in rows] == [
        ("qwen2-vl-2b", "vllm"), ("qwen2-vl-2b", "transformers")]
    for row in rows:
        res = row["result"]
        assert "failed" not in res and "skipped" not in res, row
        assert 0 < res["ttft_p50_ms"] <= res["ttft_p95_ms"]
        assert res["tokens_per_s"] > 0
        on, off = res["memory_on"], res["memory_off"]  # the timeline grows; one frame does not
        assert on["prompt_late"] > on["prompt_early"] and off["prompt_late"] == \
            off["prompt_early"]
        assert on["computed_late"] < on["prompt_late"]  # the engine's cache served the rest
        for gating in ("capacity_off", "capacity_on"):
            steps = res[gating]["steps"]
            assert steps and all(s["work"] > 0 for s in steps), (gating, steps)
        on = res["capacity_on"]["steps"]
        assert all(s["skipped"] > 0 for s in on)  # a static scene costs no model call
    table = out.read_text().splitlines()
    assert table[2].startswith("| model | engine | load s | TTFT p50 / p95 ms")
    assert table[2].rstrip().endswith("TTFT ms early -> late (memory off) |")
    assert len([line for line in table if line.startswith("| qwen")]) == 2
