"""A session's KV cache kept between its calls on the transformers engine.

A live session's prompt is its timeline (agent/timeline.py): the prompt of each call extends
the one before, token for token. The cache of a session's last call (its prompt and the answer
it generated) is kept, and the next call computes only what follows the longest common prefix
of the two. The prefix is matched on the token ids with each picture's content key folded in
(a picture's pad tokens are the same ids whatever the picture), and it ends at or before the
first token or picture that differs, never inside a picture's tokens. The cache is cropped
there (``DynamicCache.crop``).

transformers 5.19's ``generate()`` restarts from a cache by itself: its first step forwards
the tokens past the cache only, with the pixel inputs it was given, encoded before that step.
So a call that reuses passes the full ids, the pixels and grids of the pictures past the cache
only, and the position ids of the whole sequence, equal to those ``generate()`` computes from
scratch. Qwen2-VL, Qwen2.5-VL and Qwen3-VL number vision tokens in 3D (``get_rope_index``):
the positions of a prompt are kept with its cache, and the next call numbers only its tokens
past the cache, from the cached prefix's highest position on (plugins/hf/positions.py), and
sets the model's ``rope_deltas`` as numbering the whole would. A text model's positions
are the count of the tokens before each.

Reused: Qwen2-VL, Qwen2.5-VL and Qwen3-VL (text and pictures), and text on the text models of
``TEXT`` (plain 1-D rope). The full path, no reuse, for everything else: a video or a sound in
the request (their inputs are not split by picture here), any other model type (other
processors lay out pixels and positions their own way), beam search and several sequences (the
cache holds one), an encoder-decoder, a family with its own ``chat()`` (the engine never
calls this), a checkpoint whose generation config names a cache implementation, or a cache
with sliding-window or linear-attention layers (they cannot be cropped back). A LoRA adapter's
cache serves only calls with the same adapter.

The pictures a session's cache holds are not prepared again: ``known`` gives their grids,
kept with the cache, and the engine has the processor prepare only the others
(plugins/hf/partial_inputs.py); ``prepare`` asks for every picture's pixels (``full``) when
the cache turns out not to hold them all.

Bounded: ``SessionCaches`` keeps one cache per session, the least recently used goes first,
within ``max_bytes`` together. A session's cache is taken out while its call runs, so a second
call of the same session at once computes afresh. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent import ModelRequest, content_key
from plugins.hf.attention import growing_layer
from plugins.hf.positions import extended_positions, full_positions, prefix_positions

MROPE = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen3_vl"})
"""Model types whose pictures are reused: flattened patches in ``pixel_values``, one grid a
picture in ``image_grid_thw``, 3D positions."""
TEXT = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""Text models whose prompts are reused (no pictures)."""
INPUTS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                    "image_grid_thw"})
"""Processor outputs a reusing call may carry (a video's or a sound's: the full path)."""


@dataclass(frozen=True, slots=True)
class Span:
    """A picture's tokens in a prompt, ``[start, end)``, its content key and its grid (its
    row of ``image_grid_thw``)."""

    start: int
    end: int
    key: str
    grid: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Held:
    """A session's cache between its calls: what it holds (``ids``, its pictures) and for
    which adapter."""

    cache: Any
    ids: Any
    """The token ids the cache holds, a 1-D CPU tensor as long as the cache."""
    spans: tuple[Span, ...]
    adapter: str | None
    size: int
    """Bytes the cache takes."""
    positions: Any = None
    """The position ids of the prompt it was built from (3D positions), or ``None``."""


class Reuse:
    """One call's inputs for ``generate()`` from a session's cache; ``keep`` gives the cache
    back when it has run."""

    def __init__(self, caches: SessionCaches, session: str, inputs: dict[str, Any],
                 cached: int, spans: tuple[Span, ...], adapter: str | None,
                 positions: Any = None) -> None:
        self.caches, self.session, self.inputs = caches, session, inputs
        self.cached = cached
        """Prompt tokens served from the cache."""
        self.spans, self.adapter, self.positions = spans, adapter, positions

    def keep(self, output: Any) -> None:
        """After ``generate()`` returned ``output`` (its sequences): the cache, which now holds
        the prompt and the answer less its last token, is the session's again."""
        cache = self.inputs["past_key_values"]
        sequences = getattr(output, "sequences", output)
        length = cache.get_seq_length()
        if length > sequences.shape[1]:
            return
        ids = sequences[0, :length].detach().to("cpu")
        self.caches.put(self.session, Held(cache, ids, self.spans, self.adapter,
                                           cache_bytes(cache), self.positions))


class SessionCaches:
    """Sessions' caches of one model, least recently used out first past ``max_bytes``
    (0: none kept, no reuse)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, Held] = OrderedDict()
        self._lock = threading.Lock()

    def sessions(self) -> list[str]:
        """The sessions whose caches are kept, the least recently used first."""
        with self._lock:
            return list(self._held)

    @property
    def size(self) -> int:
        """Bytes the kept caches take."""
        with self._lock:
            return sum(held.size for held in self._held.values())

    def take(self, session: str) -> Held | None:
        with self._lock:
            return self._held.pop(session, None)

    def put(self, session: str, held: Held) -> None:
        """Keep ``held`` as ``session``'s cache; older ones go past the bound (one larger
        than the bound is not kept)."""
        if held.size > self.max_bytes:
            return
        with self._lock:
            self._held.pop(session, None)
            self._held[session] = held
            while sum(h.size for h in self._held.values()) > self.max_bytes:
                self._held.popitem(last=False)

    def known(self, model: Any, request: ModelRequest, kwargs: Mapping[str, Any]) -> Any:
        """The grids of the leading pictures of ``request`` (in the processor's arguments
        ``kwargs``) that its session's cache holds, as kept with it: the pictures whose
        pixels a call that reuses the cache does not need (plugins/hf/partial_inputs.py);
        ``None`` when there are none."""
        if not self.max_bytes or not request.session or "images" not in kwargs:
            return None
        if getattr(model.config, "model_type", "") not in MROPE:
            return None
        with self._lock:
            held = self._held.get(request.session)
        grids = []
        for span, key in zip(held.spans if held else (), image_keys(request), strict=False):
            if span.key != key or not span.grid:
                break
            grids.append(span.grid)
        if not grids:
            return None
        import torch

        return torch.tensor(grids)

    def prepare(self, model: Any, request: ModelRequest, inputs: Mapping[str, Any],
                adapter: str | None, options: Mapping[str, Any], known: int = 0,
                full: Callable[[], Any] | None = None) -> Reuse | None:
        """``generate()``'s inputs for ``request`` from its session's cache, or a fresh cache
        that will be kept; ``None``: the full path (see the module's docstring). ``inputs``
        may lack the pixels of its first ``known`` pictures (``known``); ``full()`` gives
        every picture's, and is called when the cache does not hold those pictures."""
        if not self.max_bytes or not request.session or not reusable(model, inputs, options):
            return None
        cache = fresh_cache(model)
        if cache is None:
            return None
        keys = image_keys(request) if "image_grid_thw" in inputs else []
        spans = image_spans(model, inputs, keys)
        if spans is None:
            return None
        held = self.take(request.session)
        ids = inputs["input_ids"][0].detach().to("cpu")
        reused = common_prefix(held, ids, spans) if held and held.adapter == adapter else 0
        if known and reused < spans[known - 1].end:  # the cache does not hold them all
            assert full is not None
            inputs, known = full(), 0
        args = dict(inputs)
        positions = None
        if spans and "mm_token_type_ids" in inputs:  # 3D positions, kept for the next call
            if held is not None and reused and held.positions is not None:
                positions = extended_positions(model, inputs, prefix_positions(
                    held.positions, reused), first_past(spans, reused))
            else:
                positions = args["position_ids"] = full_positions(model, inputs)
        if held is not None and reused:
            cache = held.cache
            cache.crop(reused - cache.get_seq_length())
            args = suffix_inputs(model, inputs, spans, reused, known, positions)
        args["past_key_values"] = cache
        return Reuse(self, request.session, args, reused, spans, adapter, positions)


def reusable(model: Any, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> bool:
    """Whether this model and call can start from a kept cache."""
    config = model.config
    kind = getattr(config, "model_type", "")
    if kind not in MROPE | TEXT or getattr(config, "is_encoder_decoder", False):
        return False
    if options.get("num_beams", 1) > 1 or options.get("num_return_sequences", 1) > 1:
        return False
    if getattr(model.generation_config, "cache_implementation", None) is not None:
        return False
    if not set(inputs) <= INPUTS or inputs["input_ids"].shape[0] != 1:
        return False
    return "image_grid_thw" not in inputs or kind in MROPE


def fresh_cache(model: Any) -> Any:
    """An empty cache for ``model`` whose every layer can be cropped, each a ``GrowingLayer``
    (plugins/hf/attention.py: it appends without copying what it holds); ``None``: one has a
    sliding window or linear attention."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [growing_layer() for _ in cache.layers]
    return cache


def image_keys(request: ModelRequest) -> list[str]:
    """Each picture's content key, in the order ``processor_inputs`` passes them: few-shot
    examples, the sequence's (its own key when it has one), the request's."""
    keys = [content_key(image) for image, _ in request.examples]
    keys += [e.key or content_key(e.image) for e in request.sequence if e.image is not None]
    return keys + [content_key(image) for image in request.images]


def image_spans(model: Any, inputs: Mapping[str, Any],
                keys: list[str]) -> tuple[Span, ...] | None:
    """Where each picture's tokens are in the prompt: one run of image tokens a picture, as
    long as its grid says; ``None`` when they do not match the pictures."""
    if not keys:
        return ()
    import torch

    ids = inputs["input_ids"][0]
    marked = (ids == model.config.image_token_id).to(torch.int8)
    edge = torch.diff(marked, prepend=marked.new_zeros(1), append=marked.new_zeros(1))
    starts = (edge == 1).nonzero().flatten().tolist()
    ends = (edge == -1).nonzero().flatten().tolist()
    merge = model.config.vision_config.spatial_merge_size
    sizes = (inputs["image_grid_thw"].prod(-1) // merge**2).tolist()
    if not len(starts) == len(sizes) == len(keys):
        return None
    if any(end - start != size for start, end, size in zip(starts, ends, sizes, strict=True)):
        return None
    grids = [tuple(row) for row in inputs["image_grid_thw"].tolist()]
    return tuple(Span(s, e, k, g) for s, e, k, g in zip(starts, ends, keys, grids, strict=True))


def common_prefix(held: Held, ids: Any, spans: tuple[Span, ...]) -> int:
    """The tokens of ``ids`` the held cache serves: up to the first token or picture that
    differs, not inside a picture, and not the last token (one is always computed)."""
    n = min(int(held.ids.shape[0]), int(ids.shape[0]) - 1)
    differ = (held.ids[:n] != ids[:n]).nonzero()
    at = int(differ[0, 0]) if differ.numel() else n
    for old, new in zip(held.spans, spans, strict=False):
        if old.start >= at:
            break
        if old != new:
            at = min(old.start, new.start)
            break
    for span in spans:
        if span.start < at < span.end:
            at = span.start
    return max(at, 0)


def suffix_inputs(model: Any, inputs: Mapping[str, Any], spans: tuple[Span, ...],
                  reused: int, known: int = 0, positions: Any = None) -> dict[str, Any]:
    """The inputs of a call that starts at token ``reused``: the whole sequence's position ids
    (``positions``, or numbered afresh), and the pixels and grids of the pictures past the
    cache only (none: no pixel inputs). ``inputs`` holds no pixels of its first ``known``
    pictures, all in the cache."""
    out = {k: v for k, v in inputs.items() if k not in ("pixel_values", "image_grid_thw")}
    out["position_ids"] = full_positions(model, inputs) if positions is None else positions
    first = first_past(spans, reused)
    if first < len(spans):
        grid = inputs["image_grid_thw"]
        rows = int(grid[known:first].prod(-1).sum())
        out.update(pixel_values=inputs["pixel_values"][rows:], image_grid_thw=grid[first:])
    return out


def first_past(spans: tuple[Span, ...], reused: int) -> int:
    """The index of the first picture past the cache's ``reused`` tokens (``len(spans)``:
    none)."""
    return next((i for i, span in enumerate(spans) if span.start >= reused), len(spans))


def cache_bytes(cache: Any) -> int:
    """Bytes a cache's keys and values take (a ``GrowingLayer``'s room included)."""
    return sum(layer.nbytes() if hasattr(layer, "nbytes") else
               sum(int(t.numel()) * t.element_size() for t in (layer.keys, layer.values)
                   if t is not None) for layer in cache.layers)
