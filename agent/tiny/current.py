"""Tiny checkpoints of the current generation: Qwen3-VL, the Qwen3-Omni thinker, MiniCPM-V 4.6,
LLaVA-OneVision and Qwen3-ASR. Real classes, processors shaped like the real checkpoints'
(special tokens, chat templates read from the published ``chat_template.jinja`` files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.tiny import templates
from agent.tiny.build import TEXT, _hub_layout, _save, ids, tokenizer

PATCH16 = {"shortest_edge": 32 * 32, "longest_edge": 16 * 32 * 32}
"""Qwen3-VL's patches are 16 pixels (merged 2x2): 12 tokens for 320x240."""


def _qwen3_text(tok: Any, **extra: Any) -> dict[str, Any]:
    i = ids(tok)
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [6, 5, 5],
            "mrope_interleaved": True}
    return dict(TEXT, head_dim=32, vocab_size=len(tok), bos_token_id=i["<|endoftext|>"],
                eos_token_id=i["<|im_end|>"], pad_token_id=i["<|endoftext|>"],
                rope_parameters=rope, **extra)


def qwen3_vl(out: Path) -> None:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tok = tokenizer()
    i = ids(tok)
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                  out_hidden_size=128, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, num_position_embeddings=256,
                  deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=_qwen3_text(tok), vision_config=vision,
                           image_token_id=i["<|image_pad|>"], video_token_id=i["<|video_pad|>"],
                           vision_start_token_id=i["<|vision_start|>"],
                           vision_end_token_id=i["<|vision_end|>"])
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=PATCH16, patch_size=16,
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3),
        video_processor=Qwen3VLVideoProcessor(size=PATCH16, patch_size=16),
        tokenizer=tok, chat_template=templates.QWEN3_VL)
    _save(Qwen3VLForConditionalGeneration(config), processor, tok, out)


QWEN3_AUDIO_TOKENS = dict(audio_token="<|audio_pad|>", audio_bos_token="<|audio_start|>",
                          audio_eos_token="<|audio_end|>")
QWEN3_VISION_TOKENS = dict(image_token="<|image_pad|>", video_token="<|video_pad|>",
                           vision_bos_token="<|vision_start|>",
                           vision_eos_token="<|vision_end|>")
AUDIO3 = dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128,
              num_mel_bins=128, output_dim=128, downsample_hidden_size=32, n_window=50,
              n_window_infer=800)


def qwen3_omni(out: Path) -> None:
    """The Qwen3-Omni thinker (image, video and audio in; text out): a small MoE."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3OmniMoeProcessor,
        Qwen3OmniMoeThinkerConfig,
        Qwen3OmniMoeThinkerForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    tok = tokenizer(**QWEN3_AUDIO_TOKENS, **QWEN3_VISION_TOKENS)
    i = ids(tok)
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                  out_hidden_size=128, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, num_position_embeddings=256,
                  deepstack_visual_indexes=[0])
    text = _qwen3_text(tok, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                       decoder_sparse_step=1)
    config = Qwen3OmniMoeThinkerConfig(  # type: ignore[call-arg]
        audio_config=AUDIO3, vision_config=vision, text_config=text,
        audio_token_id=i["<|audio_pad|>"], image_token_id=i["<|image_pad|>"],
        video_token_id=i["<|video_pad|>"], audio_start_token_id=i["<|audio_start|>"],
        vision_start_token_id=i["<|vision_start|>"], user_token_id=i["<|im_start|>"])
    processor = Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessor(size=PATCH16, patch_size=16,
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3),
        video_processor=Qwen2VLVideoProcessor(size=PATCH16, patch_size=16,
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3),
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok,
        chat_template=templates.QWEN3_OMNI)
    _save(Qwen3OmniMoeThinkerForConditionalGeneration(config), processor, tok, out)


def qwen3_asr(out: Path) -> None:
    """Qwen3-ASR: audio in, text out (a Qwen3 decoder behind a Whisper-style encoder)."""
    from transformers import (
        Qwen3ASRConfig,
        Qwen3ASRFeatureExtractor,
        Qwen3ASRForConditionalGeneration,
        Qwen3ASRProcessor,
    )

    tok = tokenizer(**QWEN3_AUDIO_TOKENS)
    i = ids(tok)
    text = _qwen3_text(tok)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    config = Qwen3ASRConfig(audio_config=dict(AUDIO3, max_position_embeddings=13),
                            text_config=text, audio_token_id=i["<|audio_pad|>"],
                            pad_token_id=i["<|endoftext|>"],
                            eos_token_id=[i["<|endoftext|>"], i["<|im_end|>"]])
    processor = Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(feature_size=128),
                                  tokenizer=tok, chat_template=templates.QWEN3_ASR)
    _save(Qwen3ASRForConditionalGeneration(config), processor, tok, out)


def llava_onevision(out: Path) -> None:
    """LLaVA-OneVision (llava-onevision-qwen2-*-ov-hf): SigLIP tower, Qwen2 decoder; image,
    multi-image and video."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tok = tokenizer(image_token="<image>", video_token="<video>")
    i = ids(tok)
    text = dict(TEXT, vocab_size=len(tok), model_type="qwen2", bos_token_id=i["<|endoftext|>"],
                eos_token_id=i["<|im_end|>"], pad_token_id=i["<|endoftext|>"])
    vision = dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
    config = LlavaOnevisionConfig(text_config=text, vision_config=vision,
                                  image_token_index=i["<image>"], video_token_index=i["<video>"],
                                  vision_feature_layer=-1,
                                  image_grid_pinpoints=[[56, 56], [56, 112], [112, 56]])
    size = {"height": 56, "width": 56}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size=size, image_grid_pinpoints=[[56, 56], [56, 112], [112, 56]]),
        video_processor=LlavaOnevisionVideoProcessor(size=size), tokenizer=tok,
        num_image_tokens=16, vision_feature_select_strategy="full",
        chat_template=templates.LLAVA_ONEVISION)
    _save(LlavaOnevisionForConditionalGeneration(config), processor, tok, out)
    # The hub's llava-onevision-*-hf checkpoints (and vLLM's loader) name the tower
    # vision_tower.vision_model.*; transformers loads both.
    _hub_layout(out / "model.safetensors", "vision_tower.", "vision_tower.vision_model.")


MINICPM_TOKENS = dict(image_token="<|image_pad|>", video_token="<|video_pad|>",
                      image_start_token="<image>", image_end_token="</image>",
                      slice_start_token="<slice>", slice_end_token="</slice>",
                      image_id_start_token="<image_id>", image_id_end_token="</image_id>")


def minicpm_v4_6(out: Path) -> None:
    """MiniCPM-V 4.6 as transformers implements it natively (no remote code): a SigLIP-style
    tower with a window-attention merger, a Qwen3.5 decoder (linear and full attention)."""
    from transformers import (
        MiniCPMV4_6Config,
        MiniCPMV4_6ForConditionalGeneration,
        MiniCPMV4_6ImageProcessor,
        MiniCPMV4_6Processor,
        MiniCPMV4_6VideoProcessor,
    )

    tok = tokenizer(**MINICPM_TOKENS)
    tok.add_tokens(["</image>", "<slice>", "</slice>", "<image_id>", "</image_id>"],
                   special_tokens=True)
    i = ids(tok)
    text = dict(_qwen3_text(tok), model_type="qwen3_5_text",
                layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                linear_num_value_heads=2, linear_key_head_dim=64, linear_value_head_dim=64)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e7,
                               "partial_rotary_factor": 0.25}
    vision = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,  # heads 64 wide:
                  num_attention_heads=2, image_size=56, patch_size=14,  # vLLM's CPU backend
                  insert_layer_id=0)
    config = MiniCPMV4_6Config(  # type: ignore[call-arg]
        text_config=text, vision_config=vision, image_token_id=i["<|image_pad|>"],
        video_token_id=i["<|video_pad|>"], insert_layer_id=0, image_size=56, patch_size=14)
    small = dict(scale_resolution=56, max_slice_nums=1, patch_size=14)
    processor = MiniCPMV4_6Processor(image_processor=MiniCPMV4_6ImageProcessor(**small),
                                     video_processor=MiniCPMV4_6VideoProcessor(**small),
                                     tokenizer=tok, chat_template=templates.MINICPM_V4_6)
    _save(MiniCPMV4_6ForConditionalGeneration(config), processor, tok, out)
