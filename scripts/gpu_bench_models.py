"""Full-size random-weight checkpoints built offline from the real configs (for gpu_bench.py).

Speed does not depend on the values of the weights: a checkpoint with the real architecture,
sizes and vocabulary, generating a fixed number of tokens, costs what the real one costs. The
shapes below are copied from the published ``config.json`` files of Qwen/Qwen2-VL-2B-Instruct and
Qwen/Qwen2.5-VL-7B-Instruct (text and vision towers, vocabulary, rope sections). Token ids come
from the small offline tokenizer (agent/tiny), padded with filler tokens to the real vocabulary so
that every id a random model emits decodes to text, as with the real tokenizer.

``small=True`` shrinks every size (same classes, same code path, a padded tokenizer too) so the
whole benchmark runs on a CPU in seconds.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from agent.tiny import templates
from agent.tiny.build import SPECIAL, TOKENIZER

REAL: dict[str, dict[str, Any]] = {
    "qwen2-vl-2b": {
        "family": "qwen2-vl",
        "text": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                     num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                     max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu",
                     tie_word_embeddings=True, rope_theta=1e6, mrope_section=[16, 24, 24]),
        "vision": dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16,
                       hidden_act="quick_gelu", in_channels=3, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2),
    },
    "qwen2.5-vl-7b": {
        "family": "qwen2.5-vl",
        "text": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                     max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
                     tie_word_embeddings=False, rope_theta=1e6, mrope_section=[16, 24, 24]),
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                       out_hidden_size=3584, hidden_act="silu", in_channels=3, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    },
}
TOKENIZER_SIZE = 151665
"""Ids in the real Qwen2-VL / Qwen2.5-VL tokenizers (their configs pad the vocabulary above it)."""
SMALL_TOKENIZER_SIZE, SMALL_VOCAB = 4000, 4096
"""The same padding at tiny size: filler tokens, and a vocabulary a little larger still."""
SMALL_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, mrope_section=[4, 6, 6])
SMALL_VISION = {"qwen2-vl": dict(depth=2, embed_dim=64, hidden_size=128, mlp_ratio=2, num_heads=2),
                "qwen2.5-vl": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                   out_hidden_size=128, fullatt_block_indexes=[1])}


@lru_cache(maxsize=2)
def tokenizer(size: int) -> Any:
    """The offline BPE tokenizer, padded with filler tokens (`` w123``) to ``size`` ids."""
    from transformers import Qwen2Tokenizer

    data = json.loads(TOKENIZER.read_text())
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    merges: Any = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                   for m in data["model"]["merges"]]
    for i in range(len(vocab), size - len(SPECIAL)):
        vocab[f"\u0120w{i}"] = i  # byte-level "Ġ" is a space: decodes to " w123"
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                         eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    return tok


def config(name: str, tok: Any, small: bool) -> Any:
    """The transformers config of ``name`` (real sizes unless ``small``), ids from ``tok``."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    spec = REAL[name]
    text, vision = copy.deepcopy(spec["text"]), copy.deepcopy(spec["vision"])
    if small:
        text.update(SMALL_TEXT, vocab_size=SMALL_VOCAB, max_position_embeddings=4096)
        vision.update(SMALL_VISION[spec["family"]])
    text["vocab_size"] = max(text["vocab_size"], len(tok))
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": text.pop("rope_theta"),
                               "mrope_section": text.pop("mrope_section")}
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    cls = Qwen2_5_VLConfig if spec["family"] == "qwen2.5-vl" else Qwen2VLConfig
    return cls(text_config=text, vision_config=vision,
               tie_word_embeddings=text["tie_word_embeddings"],
               image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
               vision_start_token_id=ids["<|vision_start|>"],
               vision_end_token_id=ids["<|vision_end|>"])


def build(name: str, out: Path, small: bool, device: str) -> Path:
    """Write a random-weight checkpoint of ``name`` to ``out``: in bfloat16, as the real one
    ships (a CPU engine loading it with ``dtype: auto`` then runs what its users run), except a
    ``small`` one on a CPU (float32, for the tests)."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    family = REAL[name]["family"]
    tok = tokenizer(SMALL_TOKENIZER_SIZE if small else TOKENIZER_SIZE)
    cfg = config(name, tok, small)
    torch.manual_seed(0)
    model_cls: Any = (Qwen2_5_VLForConditionalGeneration if family == "qwen2.5-vl"
                      else Qwen2VLForConditionalGeneration)
    dtype = torch.float32 if small and not device.startswith("cuda") else torch.bfloat16
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # random init where the weights will run: seconds on a GPU
            model = model_cls(cfg)
    finally:
        torch.set_default_dtype(default)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    del model
    proc_cls: Any = Qwen2_5_VLProcessor if family == "qwen2.5-vl" else Qwen2VLProcessor
    proc_cls(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
             tokenizer=tok, chat_template=templates.QWEN2_VL).save_pretrained(out)
    return out
