"""Qwen2.5-Omni whole, as published: the thinker (text), the talker and token2wav (speech), and
``spk_dict.pt``, the speakers (Chelsie, Ethan) that ``from_pretrained`` reads beside it.

As in the real checkpoint, the talker's text-side ids (its pad, start and end, each speaker's
start) sit in rows of the thinker's vocabulary past the tokenizer's. The codec vocabulary is
the real one's size, and ``plugins/hf/talker.py`` reads its end ids from the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.tiny import templates
from agent.tiny.build import (
    AUDIO,
    IMAGE_SIZE,
    TEXT,
    _audio_tokens,
    _save,
    _text,
    ids,
    tokenizer,
)

THINKER_VOCAB = 1600
"""Past the tokenizer's 1555 entries, as the real 152064 are past its 151665."""
TEXT_PAD, TEXT_START, TEXT_END = 1580, 1581, 1582
SPEAKERS = {"Chelsie": 1590, "Ethan": 1592}
"""Each speaker's start id, fed to the talker before the answer."""
CODEC = dict(vocab_size=8448, tts_codec_pad_token_id=8292, tts_codec_start_token_id=8293,
             tts_codec_end_token_id=8294, tts_codec_mask_token_id=8296)
"""The real codec ids. The talker's head gives its end ids a logit of 0, while thousands of
others are positive and the talker keeps its top 40: it never ends by itself, so an answer's
speech is as long as the engine allows (random weights would otherwise end it at random)."""
REF_MEL_FRAMES = 100
DIT: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, head_dim=32, ff_mult=2,
    emb_dim=32, block_size=24, look_ahead_layers=[1], look_backward_layers=[0], repeats=2,
    num_embeds=8448, mel_dim=80, dropout=0.0, enc_emb_dim=16, enc_dim=16,
    # the speaker encoder: at least 3 channel entries, the last the sum of the middle ones
    enc_channels=[32, 32, 32], enc_kernel_sizes=[5, 3, 1], enc_dilations=[1, 2, 1],
    enc_attention_channels=16, enc_res2net_scale=2, enc_se_channels=16,
    max_position_embeddings=32768,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
BIGVGAN = dict(
    mel_dim=80, upsample_initial_channel=64, resblock_kernel_sizes=[3],
    resblock_dilation_sizes=[[1, 3, 5]], upsample_rates=[5, 3, 2, 2, 2, 2],
    upsample_kernel_sizes=[11, 7, 4, 4, 4, 4])
"""The real upsampling: 240 samples a mel frame, 2 frames a code, so 50 codes a second."""


def qwen2_5_omni(out: Path) -> None:
    import torch
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2_5OmniProcessor,
        Qwen2_5OmniThinkerConfig,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    vision_tokens = dict(image_token="<|IMAGE|>", video_token="<|VIDEO|>",
                         vision_bos_token="<|vision_bos|>", vision_eos_token="<|vision_eos|>")
    tok = tokenizer(**_audio_tokens(), **vision_tokens)
    i = ids(tok)
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                  out_hidden_size=128, fullatt_block_indexes=[1], window_size=112,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    media: dict[str, Any] = dict(audio_token_index=i["<|AUDIO|>"], image_token_index=i["<|IMAGE|>"],
                 video_token_index=i["<|VIDEO|>"], audio_start_token_id=i["<|audio_bos|>"],
                 audio_end_token_id=i["<|audio_eos|>"],
                 vision_start_token_id=i["<|vision_bos|>"],
                 vision_end_token_id=i["<|vision_eos|>"])
    thinker = Qwen2_5OmniThinkerConfig(
        audio_config=dict(AUDIO, output_dim=128, n_window=100), vision_config=vision,
        text_config=dict(_text(tok, mrope=True), vocab_size=THINKER_VOCAB),
        user_token_id=i["<|im_start|>"], **media)
    talker = dict(
        CODEC, **media, embedding_size=TEXT["hidden_size"], hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
        tts_text_pad_token_id=TEXT_PAD, tts_text_start_token_id=TEXT_START,
        tts_text_end_token_id=TEXT_END, position_id_per_seconds=thinker.position_id_per_seconds,
        seconds_per_chunk=thinker.seconds_per_chunk, spatial_merge_size=2)
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker,
                               token2wav_config=dict(dit_config=DIT, bigvgan_config=BIGVGAN),
                               enable_audio_output=True)
    model = Qwen2_5OmniForConditionalGeneration(config).eval()
    with torch.no_grad():
        for end in (CODEC["tts_codec_pad_token_id"], CODEC["tts_codec_end_token_id"]):
            model.talker.codec_head.weight[end] = 0
    speakers = _speakers()
    _audible(model, speakers["Chelsie"])
    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(size=IMAGE_SIZE),
        video_processor=Qwen2VLVideoProcessor(size=IMAGE_SIZE),
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok,
        chat_template=templates.QWEN2_5_OMNI)
    _save(model, processor, tok, out)
    torch.save(speakers, out / "spk_dict.pt")


def _speakers() -> dict[str, dict[str, Any]]:
    """What ``generate()`` reads of a speaker: its start id, ``cond`` (the DiT's speaker
    embedding, ``(1, enc_emb_dim)``) and ``ref_mel`` (``(1, frames, mel_dim)``)."""
    import torch

    rng = torch.Generator().manual_seed(0)
    return {name: {"bos_token": start,
                   "cond": torch.randn(1, DIT["enc_emb_dim"], generator=rng),
                   "ref_mel": torch.randn(1, REF_MEL_FRAMES, DIT["mel_dim"], generator=rng) - 5}
            for name, start in SPEAKERS.items()}


def _audible(model: Any, speaker: dict[str, Any], std: float = 0.1) -> None:
    """Random weights give a wave of about 3e-8 through six upsampling stages: scale the
    vocoder's last (linear, bias-free) layer so that random codes come out at ``std``."""
    import torch

    token2wav = model.token2wav
    with torch.no_grad():
        wave = token2wav(torch.randint(0, CODEC["tts_codec_pad_token_id"], (1, 50)),
                         conditioning=speaker["cond"], reference_mel=speaker["ref_mel"])
        token2wav.code2wav_bigvgan_model.conv_post.weight.mul_(std / wave.float().std())
