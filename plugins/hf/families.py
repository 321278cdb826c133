"""The built-in model families: what each needs beyond the generic path. They register through
the ``register_families`` hook exactly as a third-party family does.

Qwen2-VL, Qwen2.5-VL, Qwen2-Audio, MiniCPM-V 4.x, LLaVA-OneVision and their peers need
nothing: the generic path serves them. These families exist for what it cannot know:
- Qwen2.5-Omni / Qwen3-Omni: a full checkpoint also holds a speech generator (the talker); text
  output needs only the thinker, so load that alone. Qwen2.5-Omni speaks with its talker when
  a model sets ``options.speech`` (plugins/hf/talker.py).
- MiniCPM-V 2.6 / MiniCPM-o 2.6: remote code written for transformers 4.x with its own
  ``chat()`` API; plugins/hf/minicpm.py loads it on 5.x and drives that API. On vLLM, their
  placeholders in the prompt (plugins/hf/minicpm_prompts.py).
- Qwen3-VL: a processor setting the reference implementation uses.
- BLIP-2, Florence-2, PaliGemma: prompt-style checkpoints with no chat template; their prompts,
  stop and post-processing are in plugins/hf/captioners.py.
"""

from __future__ import annotations

import functools
from typing import Any

from agent import Family
from plugins.hf import captioners, minicpm, minicpm_prompts

ALL_MEDIA = frozenset({"image", "video", "audio"})


def _thinker(full_type: str, full_class: str, thinker_class: str) -> Any:
    """A loader that keeps only the thinker of an Omni checkpoint (text out)."""

    def load(source: str, **kwargs: Any) -> Any:
        import transformers

        config = transformers.AutoConfig.from_pretrained(source)
        if config.model_type == full_type:
            full = getattr(transformers, full_class).from_pretrained(
                source, enable_audio_output=False, **kwargs)
            return full.thinker
        return getattr(transformers, thinker_class).from_pretrained(source, **kwargs)

    return load


def _whole(full_class: str) -> Any:
    """A loader of the whole Omni checkpoint, its talker and speakers too (speech out)."""

    def load(source: str, **kwargs: Any) -> Any:
        import transformers

        return getattr(transformers, full_class).from_pretrained(
            source, enable_audio_output=True, **kwargs)

    return load


FAMILIES = [
    # Names kept for configs written before the generic path: they are the generic path.
    Family("qwen2-vl"),
    Family("qwen2.5-vl"),
    Family("qwen2-audio"),
    # Qwen3-VL: cap each frame's pixels as the reference qwen-vl-utils does (transformers 5.19
    # does not by default and warns; 5.22 makes it the default).
    Family("qwen3-vl", model_types=("qwen3_vl",),
           processor_kwargs={"cap_pixels_per_frame": True}),
    Family("qwen2.5-omni", model_types=("qwen2_5_omni",),
           load=_thinker("qwen2_5_omni", "Qwen2_5OmniForConditionalGeneration",
                         "Qwen2_5OmniThinkerForConditionalGeneration"),
           speech=_whole("Qwen2_5OmniForConditionalGeneration")),
    Family("qwen3-omni", model_types=("qwen3_omni_moe",),
           load=_thinker("qwen3_omni_moe", "Qwen3OmniMoeForConditionalGeneration",
                         "Qwen3OmniMoeThinkerForConditionalGeneration")),
    # model_type of the published MiniCPM-V 2.6 / MiniCPM-o 2.6 config.json files. vLLM
    # serves them natively (its MiniCPMV / MiniCPMO, with the checkpoint's remote image
    # processor and tokenizer) from the placeholders `messages` writes.
    Family("minicpm-v", model_types=("minicpmv",), modalities=frozenset({"image", "video"}),
           remote_code=True, load=functools.partial(minicpm.load, family="minicpm-v"),
           chat=functools.partial(minicpm.chat, family="minicpm-v"),
           messages=minicpm_prompts.messages),
    Family("minicpm-o", model_types=("minicpmo",), modalities=ALL_MEDIA, remote_code=True,
           load=functools.partial(minicpm.load, family="minicpm-o"),
           chat=functools.partial(minicpm.chat, family="minicpm-o"),
           messages=minicpm_prompts.messages),
    # Prompt-style checkpoints (no chat template), by their config.json model_type.
    Family("blip-2", model_types=("blip-2",), prompt=captioners.blip2, stop=("\n",)),
    # An encoder-decoder: vLLM 0.32 runs it only through an out-of-tree plugin, and our vLLM
    # path writes no encoder prompts.
    Family("florence-2", model_types=("florence2",), prompt=captioners.florence2,
           answer=captioners.florence2_answer, vllm=False),
    Family("paligemma", model_types=("paligemma",), prompt=captioners.paligemma),
]
