"""A checkpoint of an architecture the project never names (LLaVA-1.5: CLIP tower, Qwen2
decoder here), built as a user's own would be: real classes, a processor with the checkpoint's
chat template. The project has no family, builder or code path for it."""

from __future__ import annotations

from pathlib import Path

from agent.tiny.build import TEXT, _hub_layout, ids, tokenizer

TEMPLATE = (  # llava-1.5-hf's template, on ChatML
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


STRICT = (  # as templates with no system role do (some Mistral, Gemma, LLaVA ones)
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    + TEMPLATE
)


def build_llava(out: Path, template: str = TEMPLATE) -> Path:
    import torch
    from transformers import (
        CLIPImageProcessor,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tok = tokenizer(image_token="<image>")
    i = ids(tok)
    text = dict(TEXT, model_type="qwen2", vocab_size=len(tok), eos_token_id=i["<|im_end|>"],
                pad_token_id=i["<|endoftext|>"], bos_token_id=i["<|endoftext|>"])
    vision = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14,
                  projection_dim=64)
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_id=i["<image>"],
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[i["<|im_end|>"], i["<|endoftext|>"]], pad_token_id=i["<|endoftext|>"])
    image = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(image_processor=image, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default",
                               num_additional_image_tokens=1,
                               chat_template=template)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # as on the hub (llava-hf/llava-1.5-*): the tower's weights under vision_tower.vision_model
    _hub_layout(out / "model.safetensors", "vision_tower.", "vision_tower.vision_model.")
    return out
