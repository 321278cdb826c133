"""Tiny MiniCPM-V 2.6 / MiniCPM-o 2.6 checkpoints, laid out as the real ones: a ``minicpmv`` /
``minicpmo`` config.json (``version`` 2.6, ``architectures`` ``MiniCPMV`` / ``MiniCPMO``) with
an ``auto_map``, the remote code beside the weights (``agent/tiny/minicpm/``: model, processor,
image processor, tokenizer, all stand-ins written for these checkpoints), weights named as
vLLM's native implementation loads them (``llm.*``, ``vpm.*``, ``resampler.*``, ``apm.*``,
``audio_projection_layer.*``), and a tokenizer with the MiniCPM special tokens. Loading it takes
``trust_remote_code`` on both engines, as the real checkpoints do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from agent.tiny import templates
from agent.tiny.build import SPECIAL, TEXT, tokenizer

CODE = Path(__file__).with_name("minicpm")
COMMON = ["configuration_tinyminicpm.py", "tinyminicpm_common.py", "processing_tinyminicpm.py",
          "image_processing_tinyminicpmv.py", "tokenization_tinyminicpm.py"]
MINICPM_TOKENS = ["<unk>", "<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>",
                  "<quad>", "</quad>", "<point>", "</point>", "<slice>", "</slice>",
                  "<image_id>", "</image_id>", "<|audio_start|>", "<|audio_end|>",
                  "<|spk_bos|>", "<|spk|>", "<|spk_eos|>", "<|tts_bos|>", "<|tts_eos|>"]
QUERIES = 16  # the resampler's queries: tokens per image slice (64 in the real checkpoints)
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
              image_size=980, patch_size=14, model_type="siglip_vision_model",
              _attn_implementation="eager")
AUDIO = dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=256,
             num_mel_bins=80, max_source_positions=1500, _attn_implementation="sdpa")
"""Whisper's: ``encoder_ffn_dim // 4`` is the audio projection's input (``d_model``)."""


def _tokenizer(out: Path) -> Any:
    tok = tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [*SPECIAL, *MINICPM_TOKENS]})
    tok.unk_token, tok.bos_token = "<unk>", "<|im_start|>"  # as MiniCPM-V 2.6's tokenizer
    tok.chat_template = templates.MINICPM
    tok.save_pretrained(out)
    path = out / "tokenizer_config.json"
    saved = json.loads(path.read_text())
    saved.update(tokenizer_class="TinyMiniCPMTokenizer", auto_map={
        "AutoTokenizer": ["tokenization_tinyminicpm.TinyMiniCPMTokenizer", None]})
    path.write_text(json.dumps(saved, indent=1))
    return tok


def _config(tok: Any, kind: str) -> dict[str, Any]:
    upper = kind.upper()
    config: dict[str, Any] = dict(
        TEXT, vocab_size=len(tok), bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=False, model_type=f"minicpm{kind}", architectures=[f"MiniCPM{upper}"],
        version=2.6, query_num=QUERIES, image_size=448, drop_vision_last_layer=False,
        batch_vision_input=True, slice_mode=True, use_image_id=True,
        slice_config={"max_slice_nums": 9, "patch_size": 14, "model_type": f"minicpm{kind}"},
        vision_config=VISION,
        auto_map={"AutoConfig": f"configuration_tinyminicpm.TinyMiniCPM{upper}Config",
                  "AutoModel": f"modeling_tinyminicpm{kind}.TinyMiniCPM{upper}",
                  "AutoModelForCausalLM": f"modeling_tinyminicpm{kind}.TinyMiniCPM{upper}"})
    if kind == "o":  # init_vision / init_audio / init_tts stay at their defaults, true
        config.update(audio_config=AUDIO, audio_pool_step=2, audio_chunk_length=1.0)
    return config


def _preprocessor(kind: str) -> dict[str, Any]:
    upper = kind.upper()
    config: dict[str, Any] = dict(
        image_processor_type="TinyMiniCPMVImageProcessor",
        processor_class=f"TinyMiniCPM{upper}Processor",
        auto_map={"AutoProcessor": f"processing_tinyminicpm.TinyMiniCPM{upper}Processor",
                  "AutoImageProcessor": "image_processing_tinyminicpmv.TinyMiniCPMVImageProcessor"},
        max_slice_nums=9, scale_resolution=448, patch_size=14, use_image_id=True,
        image_feature_size=QUERIES, im_start="<image>", im_end="</image>", slice_start="<slice>",
        slice_end="</slice>", unk="<unk>", im_id_start="<image_id>", im_id_end="</image_id>",
        slice_mode=True, norm_mean=[0.5, 0.5, 0.5], norm_std=[0.5, 0.5, 0.5], version=2.6)
    if kind == "o":  # MiniCPM-o's Whisper feature extractor reads the same file
        config.update(feature_extractor_type="WhisperFeatureExtractor", feature_size=80,
                      sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
                      padding_value=0.0, return_attention_mask=False)
    return config


def minicpm(out: Path, audio: bool) -> None:
    from transformers import GenerationConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    kind = "o" if audio else "v"
    files = [*COMMON, f"modeling_tinyminicpm{kind}.py"]
    for name in files:
        shutil.copy(CODE / name, out / name)
    tok = _tokenizer(out)
    config = _config(tok, kind)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "preprocessor_config.json").write_text(json.dumps(_preprocessor(kind), indent=1))
    # MiniCPM-o's code imports names transformers 5.x lacks: the same shim the engine uses
    from plugins.hf.minicpm import install_transformers_4_names

    install_transformers_4_names()
    config_cls: Any = get_class_from_dynamic_module(config["auto_map"]["AutoConfig"], out)
    model_cls: Any = get_class_from_dynamic_module(config["auto_map"]["AutoModel"], out)
    model = model_cls(config_cls.from_pretrained(out, init_tts=False))
    model.post_init()  # the remote classes never call it; save_pretrained needs it
    end = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=end[1],
                                               do_sample=False)
    model.save_pretrained(out)
    (out / "config.json").write_text(json.dumps(config, indent=1))  # init_tts at its default
    for name in files:  # save_pretrained may have rewritten them: keep ours
        shutil.copy(CODE / name, out / name)
