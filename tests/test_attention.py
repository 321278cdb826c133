"""plugins/hf/attention.py: a cache layer that appends without copying what it holds, and SDPA
attention that takes grouped key and value heads as they are. Each must compute exactly what
transformers' own path does: the same keys and values, the same attention, the same logits."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from plugins.hf.attention import GROUPED_SDPA, grouped_sdpa, growing_layer, use_grouped_sdpa
from plugins.hf.kv_reuse import cache_bytes


def kv(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 2, tokens, 8, generator=gen),
            torch.randn(1, 2, tokens, 8, generator=gen))


def test_a_growing_layer_holds_what_concatenation_holds() -> None:
    """Appends, crops (as a session's next call does) and appends again: the same keys and
    values as ``DynamicLayer``'s; within its room it keeps its buffers, past it grows them."""
    grown, plain = growing_layer(), DynamicLayer()
    steps = [("add", 300), ("add", 1), ("crop", 40), ("add", 57), ("add", 1), ("crop", 3),
             ("add", 200), ("add", 1)]
    for i, (op, n) in enumerate(steps):
        if op == "crop":
            grown.crop(-n)
            plain.crop(-n)
            continue
        room = grown.room
        k, v = kv(n, i)
        keys, values = grown.update(k, v)
        expect_keys, expect_values = plain.update(k, v)
        assert torch.equal(keys, expect_keys) and torch.equal(values, expect_values)
        if room is not None and grown.get_seq_length() <= room[0].shape[-2]:
            assert keys.data_ptr() == room[0].data_ptr(), "room to spare: nothing copied"
    assert grown.get_seq_length() == plain.get_seq_length() == 517
    assert grown.room is not None and grown.room[0].shape[-2] == 774  # 300, 450, then 774
    held = 2 * grown.keys.numel() * grown.keys.element_size()
    assert grown.nbytes() > held  # its bound counts the room too
    cache = DynamicCache()
    cache.layers = [grown]
    assert cache_bytes(cache) == grown.nbytes()
    grown.reset()
    assert grown.room is None and grown.get_seq_length() == 0


class Module(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_grouped_sdpa_attends_as_transformers_sdpa(mask_dtype: torch.dtype) -> None:
    """A call's new tokens against a longer cache (a bottom-right causal mask), six query heads
    on two key heads: the attention transformers computes by repeating the heads."""
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(1, 6, 5, 16, generator=gen)
    key, value = torch.randn(1, 2, 40, 16, generator=gen), torch.randn(1, 2, 40, 16, generator=gen)
    allowed = torch.ones(5, 40, dtype=torch.bool).tril(40 - 5)[None, None]
    mask = allowed if mask_dtype == torch.bool else torch.zeros(
        allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ours, _ = grouped_sdpa(Module(), query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(Module(), query, key, value, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (1, 5, 6, 16)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    unmasked, _ = grouped_sdpa(Module(), query, key, value, None, scaling=0.25)  # transformers'
    expected, _ = sdpa_attention_forward(Module(), query, key, value, None, scaling=0.25)
    assert torch.equal(unmasked, expected)


def test_a_model_extending_its_cache_answers_as_computed_whole() -> None:
    """A tiny Qwen2 with both: 300 tokens, cut back by 20 and extended by 57 (a session's next
    call), gives the logits the stock model gives for the whole sequence at once."""
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, num_hidden_layers=2, vocab_size=500)
    config._attn_implementation = "sdpa"
    stock = Qwen2ForCausalLM(config).eval()
    ours = Qwen2ForCausalLM(copy.deepcopy(config)).eval()
    ours.load_state_dict(stock.state_dict())
    assert use_grouped_sdpa(ours) and ours.config._attn_implementation == GROUPED_SDPA
    assert stock.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 500, (1, 337))
    cache = DynamicCache(config=ours.config)
    cache.layers = [growing_layer() for _ in cache.layers]
    with torch.no_grad():
        ours(input_ids=ids[:, :300], past_key_values=cache, use_cache=True)
        cache.crop(-20)
        got = ours(input_ids=ids[:, 280:], past_key_values=cache, use_cache=True,
                   position_ids=torch.arange(280, 337)[None]).logits
        want = stock(input_ids=ids).logits[:, 280:]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
