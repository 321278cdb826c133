"""GPU check: load real checkpoints on CUDA and time the first token, per family.

    python scripts/gpu_check.py --family qwen2-vl --source Qwen/Qwen2-VL-2B-Instruct \
        [--engine transformers] [--dtype bfloat16] [--out results.json]

It goes through the same engine classes the server uses. Run it on a machine with a GPU and
the checkpoints reachable (a local directory, or a hub id with network access); it refuses to
run without CUDA (``--device cpu`` runs it on a CPU, as tests/test_gpu_check.py does with a tiny
checkpoint). A family whose checkpoints ship their own code (MiniCPM-V/o) runs it, as
``--trust-remote-code`` would. `tests/test_gpu.py` runs it for every checkpoint named in
STREAMAGENT_GPU_MODELS ("family=source,family=source").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
from PIL import Image, ImageDraw

from agent.config import GenerationConfig, ModelConfig
from agent.engine import ModelRequest
from agent.parts import TextDelta
from agent.plugins import collect, get_plugin_manager
from agent.runtime import build_engines


async def check(family: str, source: str, engine_kind: str, dtype: str,
                device: str = "cuda") -> dict[str, object]:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU check needs one")
    registry = collect(get_plugin_manager())
    known = registry.families.get(family)
    config = ModelConfig(engine=engine_kind, family=family, source=source, device=device,
                         dtype=dtype, trust_remote_code=bool(known and known.remote_code),
                         generation=GenerationConfig(max_new_tokens=64))
    engine = build_engines({family: config}, registry.engines, registry.families)[family]
    began = time.perf_counter()
    await engine.start()
    load_s = time.perf_counter() - began
    picture = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(picture).text((200, 220), "HELLO GPU", fill="black")
    image = np.asarray(picture)
    audio = (0.1 * np.sin(np.arange(16000 * 3) / 5)).astype(np.float32)
    request = ModelRequest(prompt="What do you see and hear?",
                           images=(image,) if family != "qwen2-audio" else (),
                           audio=audio if family in ("qwen2-audio", "qwen2.5-omni",
                                                     "minicpm-o") else None)
    results = []
    for _ in range(3):  # the first includes warm-up; report each
        t0, first, pieces = time.perf_counter(), None, []
        async for part in engine.stream(request):
            if isinstance(part, TextDelta):
                first = first or time.perf_counter() - t0
                pieces.append(part.text)
        results.append({"ttft_s": first, "total_s": time.perf_counter() - t0,
                        "text": "".join(pieces)[:120]})
    await engine.close()
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    return {"family": family, "source": source, "engine": engine_kind, "dtype": dtype,
            "load_s": load_s, "device": name, "runs": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--engine", default="transformers")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    result = asyncio.run(check(args.family, args.source, args.engine, args.dtype, args.device))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
