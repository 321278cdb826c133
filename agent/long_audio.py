"""Audio longer than the model's encoder window, as consecutive parts of one request.

Whisper-style feature extractors (Qwen2-Audio, Qwen2.5-Omni, MiniCPM-o) pad or cut every clip
to ``n_samples`` (30 s at 16 kHz): a longer utterance given whole would lose its end without a
word. Split into equal parts of at most that length, each part becomes one audio item of the
same user message, in order. (MiniCPM-o's own processor already splits at 30 s.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def encoder_window(processor: Any) -> int | None:
    """Samples one clip may have, from the processor's feature extractor; None: no limit known."""
    extractor = getattr(processor, "feature_extractor", None)
    n = getattr(extractor, "n_samples", None)
    return int(n) if n else None


def split(audio: np.ndarray, window: int | None) -> list[np.ndarray]:
    """``audio`` as ``ceil(len / window)`` consecutive parts of equal length (no short tail)."""
    if window is None or audio.size <= window:
        return [audio]
    n = math.ceil(audio.size / window)
    return list(np.array_split(audio, n))
