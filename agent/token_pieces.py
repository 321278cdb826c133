"""A prompt's token ids, piece by piece, the pieces seen before remembered.

A live session's prompt is the prompt of its last call and a few messages more (its timeline,
agent/timeline.py), and tokenizing it whole at every call costs time that grows with the
timeline: about 4 ms a call at 100 frames of a tiny Qwen2.5-VL on vLLM, where the model's own
work is 20. Here a prompt is cut before each ``marker``, a special token (ChatML's
``<|im_start|>``, which opens every message): a fast tokenizer splits its input at special
tokens before anything else, so the ids of the whole are the ids of its pieces, one after the
other, and only the pieces not seen before are tokenized. For each set of tokenizer arguments,
the first use checks that the tokenizer agrees; where it does not (or the prompt has no
marker), the caller tokenizes the whole prompt as before.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TAKES = frozenset({"add_special_tokens", "padding"})
"""The tokenizer arguments the pieces can stand for (padding a single prompt changes nothing)."""


class TokenPieces:
    """``tokenizer``'s ids of prompts, from the pieces remembered. Bounded: the ``max_pieces``
    most recently used (at least those of the prompt at hand). Thread-safe."""

    def __init__(self, tokenizer: Any, marker: str = "<|im_start|>",
                 max_pieces: int = 4096) -> None:
        self.tokenizer, self.marker, self.max_pieces = tokenizer, marker, max_pieces
        self._ids: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._checked: dict[tuple[tuple[str, Any], ...], bool] = {}

    @property
    def checked(self) -> bool | None:
        """``None`` until the first use; then whether the pieces gave the tokenizer's ids."""
        return all(self._checked.values()) if self._checked else None

    def ids(self, text: str, **kwargs: Any) -> Any:
        """The ids ``tokenizer(text, **kwargs)`` gives (a 1-D int64 array), or ``None`` when
        the pieces cannot give them: no marker in ``text``, other arguments, or a tokenizer
        that does not cut at the marker."""
        key = tuple(sorted(kwargs.items()))
        if self._checked.get(key) is False or self.marker not in text or set(kwargs) - TAKES:
            return None
        ids = self._encode(text)
        if key not in self._checked:
            whole = dict(self.tokenizer([text], **kwargs))
            self._checked[key] = set(whole) == {"input_ids", "attention_mask"} and \
                list(whole["input_ids"][0]) == ids.tolist()
            if not self._checked[key]:
                log.info("the tokenizer does not cut at %s: prompts are tokenized whole",
                         self.marker)
                return None
        return ids

    def __call__(self, text: str, **kwargs: Any) -> Mapping[str, Any]:
        """What ``tokenizer([text], **kwargs)`` gives (``input_ids`` and ``attention_mask``);
        from the pieces, as arrays, where they can give it."""
        kwargs.pop("return_tensors", None)
        if kwargs.get("return_token_type_ids") is False:
            del kwargs["return_token_type_ids"]
        ids = self.ids(text, **kwargs)
        if ids is None:
            return dict(self.tokenizer([text], **kwargs))
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
