"""GPU benchmark on full-size random-weight checkpoints (no download): vLLM and transformers.

    python scripts/gpu_bench.py [--device cuda] [--out bench-out/gpu-bench.md] [--budget-s 470]
    python scripts/gpu_bench.py --device cpu --small     # every step, tiny sizes, on a CPU

The report goes to gpu-bench.md (and .json) in docs/ unless ``--out`` names another file.

For Qwen2-VL-2B and Qwen2.5-VL-7B (shapes from their real configs, see gpu_bench_models.py) and
each engine it measures, through the engine classes the server uses:
- TTFT for one 448x448 frame (sequential requests, each frame different), p50 / p95;
- tokens/s of one stream, and in total at the largest passing load;
- the largest number of live 1 fps sessions whose p95 freshness (window close -> first delta)
  stays under 1.5 s with at most 5% of windows dropped, with scene-change gating off (every
  window is work) and on (each session's scene changes every 10 s; the real gate decides).
Frames carry fresh camera noise every window, so no two are byte-identical and no cache helps.
Each engine runs in its own process (GPU memory is freed between them). Steps that would
overrun ``--budget-s`` are skipped and say so in the table, so a short lease always gets one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("qwen2-vl-2b", "qwen2.5-vl-7b")
ENGINES = ("vllm", "transformers")
WEIGHT = {"vllm": 2, "transformers": 1}
"""Shares of the time budget: vLLM serves many more sessions, so its search takes longer."""
BUILD_S = 45
"""Time kept for building each checkpoint still to come (7B: random init on the GPU, 16 GB
written)."""


def run_worker(engine: str, name: str, source: Path, args: argparse.Namespace,
               deadline: float) -> dict[str, Any]:
    """One engine on one checkpoint, in a child process (on a CPU: in this one, which saves
    the imports); its JSON result (or why not)."""
    left = deadline - time.monotonic()
    if left < (15 if args.small else 60):
        return {"skipped": "time budget"}
    if not args.device.startswith("cuda"):
        from scripts import gpu_bench_worker

        job = argparse.Namespace(engine=engine, model=name, source=str(source),
                                 device=args.device, small=args.small, deadline_s=left - 10)
        try:
            return asyncio.run(gpu_bench_worker.main(job))
        except Exception as exc:
            return {"failed": f"{type(exc).__name__}: {exc}"[-300:]}
    cmd = [sys.executable, "-m", "scripts.gpu_bench_worker", engine, name, str(source),
           "--device", args.device, "--deadline-s", str(left - 10)]
    if args.small:
        cmd.append("--small")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        return {"skipped": "timed out"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"failed": " / ".join(tail)[-300:]}
    result: dict[str, Any] = json.loads(lines[-1][7:])
    return result


def cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def memory_cells(res: dict[str, Any]) -> str:
    """The memory step's figures: a live session's timeline, early and late in the stream."""
    on, off = res.get("memory_on"), res.get("memory_off")
    if not on or not off:
        return "- | -"
    return (f"{on['computed_early']:.0f} -> {on['computed_late']:.0f} "
            f"({on['prompt_late']:.0f}) | {on['ttft_early_ms']:.0f} -> "
            f"{on['ttft_late_ms']:.0f} ({off['ttft_late_ms']:.0f})")


def table(rows: list[dict[str, Any]], header: str) -> str:
    out = [header, "",
           "| model | engine | load s | TTFT p50 / p95 ms | tokens/s, 1 stream | sessions, gating "
           "off | sessions, gating on | tokens/s at most sessions | memory: computed tokens "
           "early -> late (prompt late) | memory: TTFT ms early -> late (memory off) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        if "skipped" in res or "failed" in res:
            note = res.get("skipped") or "failed: " + res["failed"]
            out.append(f"| {r['model']} | {r['engine']} | {note} | | | | | | | |")
            continue
        off, on = res.get("capacity_off", {}), res.get("capacity_on", {})
        out.append(
            f"| {r['model']} | {r['engine']} | {res['load_s']:.0f} | "
            f"{cell(res.get('ttft_p50_ms'), '.0f')} / {cell(res.get('ttft_p95_ms'), '.0f')} | "
            f"{cell(res.get('tokens_per_s'), '.0f')} | {off.get('sessions', '-')}"
            f"{'+' if off.get('capped') else ''} | {on.get('sessions', '-')}"
            f"{'+' if on.get('capped') else ''} | "
            f"{cell(max(off.get('tokens_per_s', 0), on.get('tokens_per_s', 0)) or None, '.0f')} | "
            f"{memory_cells(res)} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU test of every step)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "gpu-bench.md")
    parser.add_argument("--budget-s", type=float, default=470.0)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where checkpoints are written (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda needs a CUDA GPU; use --device cpu --small on a CPU")
    from scripts.gpu_bench_models import build

    deadline = time.monotonic() + args.budget_s
    began = time.monotonic()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    rows = []
    models, engines = args.models.split(","), args.engines.split(",")
    weights_left = len(models) * sum(WEIGHT.get(e, 1) for e in engines)
    for m, name in enumerate(models):
        t0 = time.monotonic()
        source = build(name, work / name, args.small, args.device)
        if args.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        print(f"{name}: checkpoint built in {time.monotonic() - t0:.0f} s at {source}", flush=True)
        for engine in engines:
            builds_left = len(models) - m - 1
            share = ((deadline - time.monotonic() - BUILD_S * builds_left)
                     * WEIGHT.get(engine, 1) / weights_left)
            weights_left -= WEIGHT.get(engine, 1)
            result = run_worker(engine, name, source, args, time.monotonic() + share)
            print(name, engine, result, flush=True)
            rows.append({"model": name, "engine": engine, "result": result})
    header = (f"GPU benchmark ({'tiny sizes, ' if args.small else ''}device {args.device}"
              f"{', ' + device_name() if args.device.startswith('cuda') else ''}), "
              f"{time.strftime('%Y-%m-%d')}, {time.monotonic() - began:.0f} s in all. "
              "Sessions: the largest N tried (1, 2, 4, ...) with p95 freshness < 1.5 s and <= 5% "
              "of windows dropped ('+': the largest N tried passed).")
    text = table(rows, header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    print(text)


def device_name() -> str:
    import torch

    return str(torch.cuda.get_device_name(0))


if __name__ == "__main__":
    main()
