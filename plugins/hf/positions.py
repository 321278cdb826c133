"""Position ids of a call that reuses a session's cache, numbered from the cached prefix on.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL number a prompt in 3D (``get_rope_index``): text goes on
from the highest position before it, and a picture's tokens take a grid of positions from
there. Numbering the whole prompt at each call walks every picture of the timeline in Python
(about 8 ms a call at 100 frames on this project's build machine). The positions of the tokens
a session's cache holds do not change, so the prompt's are kept with the cache
(plugins/hf/kv_reuse.py) and only the rest is numbered, on its own, from the prefix's highest
position on. tests/test_kv_reuse.py checks that they equal the whole prompt's numbering, and
the answers the full path's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def full_positions(model: Any, inputs: Mapping[str, Any]) -> Any:
    """The prompt's position ids as ``generate()`` numbers them from scratch (this sets the
    model's ``rope_deltas`` too)."""
    context = {k: inputs[k] for k in ("attention_mask", "mm_token_type_ids", "image_grid_thw")
               if k in inputs}
    return model._prepare_position_ids_for_generation(inputs["input_ids"], context)


def prefix_positions(prompt: Any, length: int) -> Any:
    """The position ids (``[4, 1, length]``: text, then the three rows of 3D positions) of the
    first ``length`` tokens a cache holds, from those of the prompt it was built from
    (``prompt``); its answer's tokens, past the prompt, went on as text."""
    import torch

    have = int(prompt.shape[-1])
    if length <= have:
        return prompt[..., :length]
    more = torch.arange(have, length, dtype=prompt.dtype, device=prompt.device)
    after = more - have + int(prompt[1:].max()) + 1
    return torch.cat([prompt, torch.stack([more, after, after, after]).unsqueeze(1)], dim=-1)


def extended_positions(model: Any, inputs: Mapping[str, Any], prefix: Any,
                       first_picture: int) -> Any:
    """The whole prompt's position ids: ``prefix`` (its first tokens'), then the rest numbered
    alone (its pictures from ``first_picture`` on) from the prefix's highest position on. Sets
    the model's ``rope_deltas`` as numbering the whole prompt does."""
    import torch

    start, ids = int(prefix.shape[-1]), inputs["input_ids"]
    grids = inputs["image_grid_thw"][first_picture:]
    rest, _ = model.model.get_rope_index(ids[:, start:], inputs["mm_token_type_ids"][:, start:],
                                         image_grid_thw=grids if len(grids) else None)
    vision = torch.cat([prefix[1:], rest + prefix[1:].max() + 1], dim=-1)
    total = int(ids.shape[1])
    model.model.rope_deltas = (vision.max() + 1 - total).view(1, 1)
    text = torch.arange(total, dtype=vision.dtype, device=vision.device).view(1, 1, -1)
    return torch.cat([text, vision], dim=0)
