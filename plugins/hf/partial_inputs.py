"""Processor inputs that prepare only the pictures past a session's cache.

A live session's prompt holds every frame of its timeline, and the processor prepares every
picture's pixels at each call (resize, normalize, cut into patches), though a call that
reuses the session's cache (plugins/hf/kv_reuse.py) passes only the new pictures' pixels to
``generate()``. With 100 frames of 320x240 that preparing is about two thirds of the
processor's time, and it grows with the timeline. Here the first pictures, which the cache
holds, are not prepared: their grids, kept with the cache, give their token counts and 3D
positions. The text side is the processor's own: its replacement of each placeholder, its
tokenizer and its token types.

Only for processors whose ``__call__`` is ``ProcessorMixin``'s (Qwen2-VL, Qwen2.5-VL and
Qwen3-VL in transformers 5.19), with pictures and no video or sound. tests/test_kv_reuse.py
checks that the outputs are the processor's own, less the known pictures' pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from agent import TokenPieces

TEXT_ONLY = frozenset({"images", "add_special_tokens"})
"""Arguments of a call this path takes: pictures and the tokenizer's BOS switch."""


def token_types(processor: Any, ids: Any) -> Any:
    """``processor.create_mm_token_type_ids(ids)``, for ids as an array too (without its
    round trips through Python lists)."""
    if not isinstance(ids, np.ndarray):
        return processor.create_mm_token_type_ids(ids)
    types = np.zeros_like(ids)
    for kind, tokens in enumerate((processor.image_token_ids, processor.video_token_ids,
                                   processor.audio_token_ids), start=1):
        types[np.isin(ids, tokens)] = kind
    return types


def partial_inputs(processor: Any, text: str, kwargs: Mapping[str, Any],
                   family_kwargs: Mapping[str, Any], known: Any,
                   pieces: TokenPieces | None = None) -> Any:
    """What ``processor(text=[text], return_tensors="pt", **kwargs, **family_kwargs)``
    returns, without the pixels of the first ``len(known)`` pictures, whose grids are
    ``known`` (rows of ``image_grid_thw``); ``image_grid_thw`` covers every picture.
    ``None`` when this processor or call cannot be split so."""
    import torch
    from transformers import BatchFeature
    from transformers.processing_utils import ProcessorMixin

    images = list(kwargs.get("images") or ())
    if type(processor).__call__ is not ProcessorMixin.__call__ or not set(kwargs) <= TEXT_ONLY:
        return None
    if not 0 < len(known) <= len(images):
        return None
    rest = {k: v for k, v in kwargs.items() if k != "images"}
    merged = processor._merge_kwargs(processor.valid_processor_kwargs,
                                     tokenizer_init_kwargs=processor.tokenizer.init_kwargs,
                                     return_tensors="pt", **rest, **family_kwargs)
    data: dict[str, Any] = {}
    grid = known
    if len(known) < len(images):
        data.update(processor.image_processor(images[len(known):], **merged["images_kwargs"]))
        grid = torch.cat([known.to(data["image_grid_thw"].dtype), data["image_grid_thw"]])
    rows = [tuple(row) for row in grid.tolist()]
    said = {row: processor.replace_image_token({"image_grid_thw": [torch.tensor(row)]}, 0)
            for row in set(rows)}  # the processor's own placeholder, once a size
    replacements = [said[row] for row in rows]
    expanded, _ = processor.get_text_with_replacements([text], replacements)
    text_kwargs = dict(merged["text_kwargs"])
    types = text_kwargs.pop("return_mm_token_type_ids", False)
    text_kwargs.pop("return_text_replacement_offsets", None)
    tokens = processor.tokenizer(expanded, **text_kwargs) if pieces is None else \
        pieces(expanded[0], **text_kwargs)
    data.update(tokens, image_grid_thw=grid)
    if types:
        data["mm_token_type_ids"] = token_types(processor, tokens["input_ids"])
    unused = set(processor.unused_input_names)
    return BatchFeature({k: v for k, v in data.items() if k not in unused}, tensor_type="pt")
