"""What a checkpoint's chat template takes, learned by rendering probes with its processor.

Three styles: typed content parts (most multimodal templates: ``{"type": "image"}`` parts
render a placeholder), plain-string content (JoyCaption's Llama 3.1 template calls
``content.replace``, fails on a list, and puts the image token in the first user turn itself),
and none (BLIP-2, Florence-2, PaliGemma: prompt-style checkpoints whose processor places the
image tokens around a bare prompt).
"""

from __future__ import annotations

from typing import Any

PARTS, STRINGS, UNTEMPLATED = "parts", "strings", "untemplated"
PROBE = "streamagent probe"
TOKENS = {"image": "image_token", "video": "video_token", "audio": "audio_token"}
"""The processor (or tokenizer) attribute holding each modality's placeholder token."""
COMPONENTS = {"image": ("image_processor",), "video": ("video_processor",),
              "audio": ("feature_extractor", "audio_processor")}
"""The processor components that take each modality."""


def chat_template(processor: Any) -> str | None:
    """The checkpoint's chat template: the processor's, else its tokenizer's (some processors
    lose theirs when loaded from a folder; the tokenizer keeps it)."""
    template = getattr(processor, "chat_template", None)
    if template is None:
        template = getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template else None


def render(processor: Any, chat: list[dict[str, Any]], **kwargs: Any) -> str:
    """``chat`` rendered by the checkpoint's template, ready for generation."""
    if getattr(processor, "chat_template", None) is None:  # the tokenizer's, if it has one
        kwargs["chat_template"] = chat_template(processor)
    return str(processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                             **kwargs))


def _tries(processor: Any, content: Any) -> str | None:
    try:
        return render(processor, [{"role": "user", "content": content}])
    except Exception:  # a template that rejects this content shape does not take it
        return None


def template_style(processor: Any) -> str:
    """``PARTS``, ``STRINGS`` or ``UNTEMPLATED``. A template whose list content fails, or
    renders the list itself instead of its text, takes strings when a string renders."""
    if chat_template(processor) is None:
        return UNTEMPLATED
    parts = _tries(processor, [{"type": "text", "text": PROBE}])
    if parts is not None and PROBE in parts and "'type'" not in parts:
        return PARTS
    strings = _tries(processor, PROBE)
    return STRINGS if strings is not None and PROBE in strings else PARTS


def placeholder(processor: Any, modality: str) -> str | None:
    """The token the processor expands for ``modality`` (``<image>``), if it names one."""
    for owner in (processor, getattr(processor, "tokenizer", None)):
        token = getattr(owner, TOKENS[modality], None)
        token = getattr(token, "content", token)  # BLIP-2's is an AddedToken
        if isinstance(token, str) and token:
            return token
    return None


def has_component(processor: Any, modality: str) -> bool:
    return any(getattr(processor, a, None) is not None for a in COMPONENTS[modality])


def renders_part(processor: Any, modality: str) -> bool:
    """Whether the template renders a placeholder for a ``{"type": modality}`` part."""
    plain = _tries(processor, [{"type": "text", "text": "hi"}])
    with_part = _tries(processor, [{"type": modality}, {"type": "text", "text": "hi"}])
    return plain is not None and with_part is not None and with_part != plain


def placed_modalities(processor: Any, style: str) -> frozenset[str]:
    """What a checkpoint with no template (or a plain-string one) takes: each modality its
    processor has a component and a placeholder token for; with a plain-string template, the
    template must also place that token itself."""
    found = set()
    rendered = _tries(processor, "hi") if style == STRINGS else None
    for modality in COMPONENTS:
        token = placeholder(processor, modality)
        if token is None or not has_component(processor, modality):
            continue
        if style == UNTEMPLATED or (rendered is not None and token in rendered):
            found.add(modality)
    return frozenset(found)
