"""A session's next call against its kept cache, on transformers: the new tokens' forward pass
at minute 1 and at minute 5 of a live stream, transformers' own path against this project's
(plugins/hf/attention.py: grouped heads unrepeated, a cache appended in place), in one run.

The model is a Qwen2 text model of the shapes of qwen2-vl-2b's language model (its heads,
widths and vocabulary of 2,000: the vocabulary does not change a prefill's attention), with 4
of its 28 layers: every layer costs the same, so 4 are enough to compare the paths and the two
context lengths; random weights (speed does not depend on their values). Each call crops the
cache back and extends it by the new tokens, as a live session's next call does; the two
lengths alternate, so both see the same machine.

    PYTHONPATH=. .venv/bin/python -m benchmarks.attention [--reps 15]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

from benchmarks.docs import write_block
from benchmarks.run import machine

SHAPES = {
    # name: (hidden, intermediate, heads, key/value heads, layers, new tokens a call)
    "tiny (the benchmark's checkpoints)": (128, 256, 4, 2, 2, 59),
    "qwen2-vl-2b, 4 of 28 layers": (1536, 8960, 12, 2, 4, 79),
}
CONTEXTS = (1200, 5400)
"""Tokens held: about minute 1 and minute 5 of the live-memory benchmark's stream."""


def model(shape: tuple[int, ...], ours: bool) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from plugins.hf.attention import use_grouped_sdpa

    hidden, inter, heads, kv, layers, _ = shape
    config = Qwen2Config(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                         num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=2000,
                         max_position_embeddings=32768)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    out = Qwen2ForCausalLM(copy.deepcopy(config)).eval()
    if ours:
        use_grouped_sdpa(out)
    return out


def cache(net: Any, held: int, ours: bool) -> Any:
    import torch
    from transformers import DynamicCache

    from plugins.hf.attention import growing_layer

    kept = DynamicCache(config=net.config)
    if ours:
        kept.layers = [growing_layer() for _ in kept.layers]
    with torch.no_grad():
        net(input_ids=torch.randint(0, 2000, (1, held)), past_key_values=kept, use_cache=True)
    return kept


def call(net: Any, kept: Any, held: int, new: int) -> float:
    """Seconds for the forward pass of ``new`` tokens after the first ``held``."""
    import torch

    kept.crop(held - kept.get_seq_length())
    ids = torch.randint(0, 2000, (1, new))
    began = time.perf_counter()
    with torch.no_grad():
        net(input_ids=ids, past_key_values=kept, use_cache=True, logits_to_keep=1,
            position_ids=torch.arange(held, held + new)[None])
    return time.perf_counter() - began


def measure(shape: tuple[int, ...], ours: bool, reps: int) -> dict[int, float]:
    """Median milliseconds of a call at each context length (after 3 warm-up calls)."""
    net = model(shape, ours)
    kept = {held: cache(net, held, ours) for held in CONTEXTS}
    times: dict[int, list[float]] = {held: [] for held in CONTEXTS}
    for _ in range(reps + 3):
        for held in CONTEXTS:
            times[held].append(call(net, kept[held], held, shape[-1]))
    return {held: 1000 * statistics.median(t[3:]) for held, t in times.items()}


def main(reps: int) -> str:
    rows = []
    for name, shape in SHAPES.items():
        got = {ours: measure(shape, ours, reps) for ours in (False, True)}
        for ours in (False, True):
            early, late = (got[ours][held] for held in CONTEXTS)
            path = "this project's" if ours else "transformers' own"
            rows.append(f"| {name} | {path} | {early:.1f} | {late:.1f} | {late / early:.2f}x |")
            print(rows[-1], flush=True)
        late_stock, late_ours = got[False][CONTEXTS[1]], got[True][CONTEXTS[1]]
        rows.append(f"| {name} | late call, theirs / ours | | | {late_stock / late_ours:.2f}x |")
    early, late = CONTEXTS
    return f"""<!-- bench:attention -->
### A call's forward pass against a long cache: transformers' path and this project's

Measured by `benchmarks/attention.py` (`make bench`) on {time.strftime('%Y-%m-%d')}, {machine()}:
a session's next call on the transformers engine, cropping its kept cache and extending it by
the window's new tokens, with {early:,} and then {late:,} tokens held (minute 1 and minute 5 of
the stream above), the two alternating, medians of {reps} calls each. transformers' own path
repeats each grouped key and value head for its query heads and appends by concatenating the
whole cache; this project's (plugins/hf/attention.py) hands PyTorch the grouped heads as they
are and appends in place. A Qwen2 language model of the shapes given (random weights).

| shapes | path | {early:,} tokens held (ms) | {late:,} tokens held (ms) | late / early |
|---|---|---|---|---|
{chr(10).join(rows)}
<!-- /bench:attention -->"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    write_block("attention", main(parser.parse_args().reps))
