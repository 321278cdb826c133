"""Tiny random-weight checkpoints of real architectures, built offline (tests, plugin authors).

``build(family, directory)`` writes a checkpoint that loads through exactly the code users run
with real weights: ``from_pretrained`` of the real model class and processor. Output is
gibberish; the point is shapes, streaming, cancellation and the serving path. Attention heads
are 32 wide so the same checkpoints run in vLLM's CPU backend too.
"""

from __future__ import annotations

from agent.tiny.build import FAMILIES, build

__all__ = ["FAMILIES", "build"]
