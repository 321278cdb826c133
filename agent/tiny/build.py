"""The builders, one per family. Heavy imports (torch, transformers) happen inside."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.tiny import templates

TOKENIZER = Path(__file__).with_name("tokenizer.json")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>", "<|IMAGE|>", "<|VIDEO|>", "<|AUDIO|>",
           "<|vision_bos|>", "<|vision_eos|>", "<|audio_bos|>", "<|audio_eos|>",
           "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>", "<image>", "<video>"]
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)
IMAGE_SIZE = {"shortest_edge": 28 * 28, "longest_edge": 16 * 28 * 28}


def tokenizer(**special_attrs: str) -> Any:
    from transformers import Qwen2Tokenizer

    data = json.loads(TOKENIZER.read_text())
    vocab = data["model"]["vocab"]
    merges: Any = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                   for m in data["model"]["merges"]]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                         eos_token="<|im_end|>", pad_token="<|endoftext|>", **special_attrs)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    return tok


def ids(tok: Any) -> dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}


def _seed() -> None:
    import torch

    torch.manual_seed(0)


def _save(model: Any, processor: Any, tok: Any, out: Path) -> None:
    from transformers import GenerationConfig

    i = ids(tok)
    model.generation_config = GenerationConfig(
        eos_token_id=[i["<|im_end|>"], i["<|endoftext|>"]], pad_token_id=i["<|endoftext|>"],
        do_sample=False)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def qwen2_vl(out: Path, v25: bool = False) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = tokenizer()
    i = ids(tok)
    text = _text(tok, mrope=True)
    vision: dict[str, Any] = dict(depth=2, num_heads=2, patch_size=14, spatial_merge_size=2,
                                  temporal_patch_size=2, in_channels=3)
    tokens: dict[str, Any] = dict(
                  image_token_id=i["<|image_pad|>"], video_token_id=i["<|video_pad|>"],
                  vision_start_token_id=i["<|vision_start|>"],
                  vision_end_token_id=i["<|vision_end|>"])
    if v25:
        vision.update(hidden_size=64, intermediate_size=128, out_hidden_size=128,
                      window_size=112, fullatt_block_indexes=[1])
        config: Any = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model: Any = Qwen2_5_VLForConditionalGeneration(config)
        proc_cls: Any = Qwen2_5_VLProcessor
    else:
        vision.update(embed_dim=64, hidden_size=128, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model = Qwen2VLForConditionalGeneration(config)
        proc_cls = Qwen2VLProcessor
    processor = proc_cls(image_processor=Qwen2VLImageProcessor(size=IMAGE_SIZE),
                         video_processor=Qwen2VLVideoProcessor(size=IMAGE_SIZE),
                         tokenizer=tok, chat_template=templates.QWEN2_VL)
    _save(model, processor, tok, out)


def qwen2_5_vl(out: Path) -> None:
    qwen2_vl(out, v25=True)


AUDIO = dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128,
             num_mel_bins=128, max_source_positions=1500)


def _text(tok: Any, mrope: bool) -> dict[str, Any]:
    i = ids(tok)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 1e6}
    if mrope:
        rope["mrope_section"] = [4, 6, 6]
    return dict(TEXT, vocab_size=len(tok), bos_token_id=i["<|endoftext|>"],
                eos_token_id=i["<|im_end|>"], pad_token_id=i["<|endoftext|>"],
                rope_parameters=rope)


def _audio_tokens() -> dict[str, str]:
    return dict(audio_token="<|AUDIO|>", audio_bos_token="<|audio_bos|>",
                audio_eos_token="<|audio_eos|>")


def qwen2_audio(out: Path) -> None:
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tok = tokenizer(**_audio_tokens())
    config = Qwen2AudioConfig(audio_config=AUDIO, text_config=_text(tok, mrope=False),
                              audio_token_index=ids(tok)["<|AUDIO|>"])
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok,
        chat_template=templates.QWEN2_AUDIO, **_audio_tokens())
    _save(Qwen2AudioForConditionalGeneration(config), processor, tok, out)
    _hub_layout(out / "model.safetensors", "language_model.model.model.", "language_model.model.")


def _hub_layout(path: Path, old: str, new: str) -> None:
    """transformers 5.19 saves Qwen2-Audio's language model as ``language_model.model.model.*``;
    the real checkpoints on the hub (and vLLM's loader) use ``language_model.model.*``, which
    transformers also loads. Write the hub's names."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({k.replace(old, new, 1): v for k, v in tensors.items()}, path,
              metadata={"format": "pt"})


def minicpm_v(out: Path) -> None:
    _minicpm26().minicpm(out, audio=False)


def minicpm_o(out: Path) -> None:
    _minicpm26().minicpm(out, audio=True)


FAMILIES: dict[str, Callable[[Path], None]] = {
    "qwen3-vl": lambda out: _current().qwen3_vl(out),
    "qwen3-omni": lambda out: _current().qwen3_omni(out),
    "qwen3-asr": lambda out: _current().qwen3_asr(out),
    "llava-onevision": lambda out: _current().llava_onevision(out),
    "minicpm-v4.6": lambda out: _current().minicpm_v4_6(out),
    "minicpm-v": minicpm_v,
    "minicpm-o": minicpm_o,
    "qwen2-audio": qwen2_audio,
    "qwen2.5-omni": lambda out: _omni().qwen2_5_omni(out),
    "qwen2-vl": qwen2_vl,
    "qwen2.5-vl": qwen2_5_vl,
    "blip-2": lambda out: _captioners().blip2(out),
    "florence-2": lambda out: _captioners().florence2(out),
    "paligemma": lambda out: _captioners().paligemma(out),
    "joycaption": lambda out: _captioners().joycaption(out),
}


def build(family: str, directory: str | Path) -> Path:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; "
                         f"tiny checkpoints exist for {sorted(FAMILIES)}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _seed()
    FAMILIES[family](out)
    return out


def _current() -> Any:
    from agent.tiny import current

    return current


def _omni() -> Any:
    from agent.tiny import omni

    return omni


def _minicpm26() -> Any:
    from agent.tiny import minicpm26

    return minicpm26


def _captioners() -> Any:
    from agent.tiny import captioners

    return captioners
