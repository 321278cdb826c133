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

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TEXT_ONLY = frozenset({"images", "add_special_tokens"})
"""Arguments of a call this path takes: pictures and the tokenizer's BOS switch."""


class Pieces:
    """A prompt's token ids, piece by piece, the pieces seen before remembered.

    A prompt is cut before each ``marker``, a special token (ChatML's ``<|im_start|>``, which
    opens every message): a fast tokenizer splits its input at special tokens before anything
    else, so the ids of the whole are the ids of its pieces, one after the other. A live
    session's prompt is the prompt of its last call and a few messages more, so only those
    few are tokenized. The first use checks that the tokenizer agrees (else it is not used
    again). Bounded: the ``max_pieces`` most recently used. Thread-safe."""

    def __init__(self, tokenizer: Any, marker: str = "<|im_start|>",
                 max_pieces: int = 4096) -> None:
        self.tokenizer, self.marker, self.max_pieces = tokenizer, marker, max_pieces
        self._ids: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.checked: bool | None = None
        """``None`` until the first use; then whether the pieces give the tokenizer's ids."""

    def __call__(self, text: str, **kwargs: Any) -> Mapping[str, Any]:
        """What ``tokenizer([text], **kwargs)`` gives (``input_ids`` and ``attention_mask``),
        as lists."""
        kwargs.pop("return_tensors", None)
        if kwargs.get("return_token_type_ids") is False:
            del kwargs["return_token_type_ids"]
        if self.checked is False or self.marker not in text or \
                set(kwargs) - {"add_special_tokens", "padding"}:
            return dict(self.tokenizer([text], **kwargs))
        ids = self._encode(text)
        if self.checked is None:
            whole = dict(self.tokenizer([text], **kwargs))
            self.checked = set(whole) == {"input_ids", "attention_mask"} and \
                whole["input_ids"][0] == ids.tolist()
            if not self.checked:
                log.info("the tokenizer does not cut at %s: prompts are tokenized whole",
                         self.marker)
                return whole
        return {"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None]}

    def _encode(self, text: str) -> Any:
        head, *rest = text.split(self.marker)
        pieces = ([head] if head else []) + [self.marker + r for r in rest]
        with self._lock:
            new = [p for p in dict.fromkeys(pieces) if p not in self._ids]
            if new:
                made = self.tokenizer(new, add_special_tokens=False)["input_ids"]
                self._ids.update((p, np.array(i, dtype=np.int64))
                                 for p, i in zip(new, made, strict=True))
            ids = np.concatenate([self._ids[p] for p in pieces])
            for piece in pieces:
                self._ids.move_to_end(piece)
            while len(self._ids) > max(self.max_pieces, len(pieces)):
                self._ids.popitem(last=False)
        return ids


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
                   pieces: Pieces | None = None) -> Any:
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
