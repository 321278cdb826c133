"""What a call that extends a session's kept cache (plugins/hf/kv_reuse.py) costs beyond its
new tokens, made to grow less with the cache.

Such a call computes a few dozen tokens against thousands held. Two costs of transformers' own
path then grow with what is held, besides attention itself:

- ``DynamicLayer`` appends by ``torch.cat``, which copies the whole cache at every step of
  ``generate()``. ``GrowingLayer`` keeps keys and values in buffers with room to spare (grown by
  half again when full): a step copies its own tokens only.
- On a CPU with a mask (every call that starts from a cache has one), transformers' SDPA
  attention repeats each grouped key and value head for every query head it serves
  (``repeat_kv``), a copy of the whole cache per layer per step. ``grouped_sdpa`` hands the
  grouped heads to PyTorch as they are (``enable_gqa``), which computes the same attention.
  Elsewhere (a GPU, no mask, no groups) it is transformers' own ``sdpa_attention_forward``.
  ``use_grouped_sdpa`` sets it on a model that runs transformers' SDPA attention.

Measured on this CPU (benchmarks/attention.py, docs/performance.md): a window's forward pass
with 5,400 tokens held, at qwen2-vl-2b's shapes (4 of its layers), 486 ms on transformers' path,
317 ms on this one.
"""

from __future__ import annotations

import functools
from typing import Any

GROUPED_SDPA = "streamagent_grouped_sdpa"
"""The attention implementation's registered name (transformers' AttentionInterface)."""


def grouped_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                 dropout: float = 0.0, scaling: float | None = None, **kwargs: Any
                 ) -> tuple[Any, None]:
    """transformers' SDPA attention, except that grouped key and value heads go to PyTorch
    unrepeated where transformers would repeat them (a masked call on a CPU)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if (grouped and attention_mask is not None and query.device.type == "cpu"
            and kwargs.get("position_bias") is None and kwargs.get("cache") is None
            and not kwargs.get("output_attentions")):
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
            enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


def use_grouped_sdpa(model: Any) -> bool:
    """Run ``model``'s attention through ``grouped_sdpa`` if it runs transformers' SDPA (masks
    as SDPA's); ``False``: it runs another, left as it is."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa" or not (
            type(model)._can_set_attn_implementation()):
        return False
    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    model.set_attn_implementation(GROUPED_SDPA)
    return bool(model.config._attn_implementation == GROUPED_SDPA)


def growing_layer() -> Any:
    """A new ``GrowingLayer`` (its class is built on first use: transformers is imported
    then)."""
    return _growing_class()()


@functools.cache
def _growing_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """``DynamicLayer`` whose keys and values are the first tokens of buffers with room to
        spare: appending copies the new tokens only. Cropped, it keeps its buffers (the next
        call writes over what was cut)."""

        room: tuple[Any, Any] | None = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any
                   ) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            held = self.get_seq_length()
            need = held + int(key_states.shape[-2])
            if not self._fits(key_states, held, need):
                capacity = max(need, held + held // 2, 256)
                keys = key_states.new_empty((*key_states.shape[:-2], capacity,
                                             key_states.shape[-1]))
                values = value_states.new_empty((*value_states.shape[:-2], capacity,
                                                 value_states.shape[-1]))
                if held:
                    keys[..., :held, :] = self.keys
                    values[..., :held, :] = self.values
                self.room = (keys, values)
            keys, values = self.room  # type: ignore[misc]
            keys[..., held:need, :] = key_states
            values[..., held:need, :] = value_states
            self.keys, self.values = keys[..., :need, :], values[..., :need, :]
            return self.keys, self.values

        def _fits(self, key_states: Any, held: int, need: int) -> bool:
            """The buffers hold what is cached as their first ``held`` tokens and have room
            for ``need`` (not so after a reset, or a method that replaced the tensors)."""
            if self.room is None or need > self.room[0].shape[-2]:
                return False
            keys, held_keys = self.room[0], self.keys
            return bool(keys.shape[:-2] == key_states.shape[:-2] and keys.dtype == key_states.dtype
                        and (held == 0 or (held_keys is not None
                                           and held_keys.data_ptr() == keys.data_ptr())))

        def reset(self) -> None:
            super().reset()
            self.room = None

        def nbytes(self) -> int:
            """Bytes its buffers take (what it holds, and its room)."""
            if self.room is None:
                return 0
            return sum(int(t.numel()) * t.element_size() for t in self.room)

    return GrowingLayer
