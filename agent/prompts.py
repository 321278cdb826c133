"""The text a checkpoint reads for one request, the same on both engines.

Rendered by the checkpoint's chat template when it has one: with typed content parts (most), or
with plain-string content when the template takes only strings and places the image itself
(JoyCaption), checked for one BOS and one image token per picture. With no template
(prompt-style checkpoints: BLIP-2, Florence-2, PaliGemma), built by the family from the
request's task and question; the processor (or vLLM's) places the image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent import templates
from agent.engine import ModelRequest
from agent.errors import EngineError, InvalidRequest
from agent.families import DEFAULT_PROMPT, Family, Messages, media_parts, messages


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    special_tokens: bool = True
    """Whether tokenizing it adds the tokenizer's special tokens: ``False`` when the template
    already wrote the BOS (as transformers' own ``apply_chat_template`` tokenizes)."""


def question(request: ModelRequest) -> str:
    """The prompt of a checkpoint with no template and no family: the question as asked."""
    return request.prompt or DEFAULT_PROMPT


def as_strings(chat: Messages) -> Messages:
    """The chat with each message's content as one string, its text parts joined; media parts
    are left out, for the template places them itself."""
    out = []
    for message in chat:
        content = message.get("content")
        if isinstance(content, list):
            text = "".join(p.get("text", "") for p in content if p.get("type") == "text")
            message = {**message, "content": text}
        out.append(message)
    return out


def tool_specs(request: ModelRequest) -> list[dict[str, Any]] | None:
    """The functions the chat template lists for the model (none when it may call none)."""
    if not request.tools or request.tool_choice == "none":
        return None
    return [tool.spec() for tool in request.tools]


def pictures(request: ModelRequest, modalities: frozenset[str]) -> int:
    """How many pictures go to the processor with ``request``: few-shot ones, the
    conversation's, the question's."""
    if "image" not in modalities:
        return 0
    shown = sum(entry.image is not None for entry in request.sequence)
    return len(request.examples) + shown + len(request.images)


class Prompter:
    """Renders the requests of one loaded checkpoint (made once, when it loads)."""

    def __init__(self, processor: Any, family: Family, modalities: frozenset[str]) -> None:
        self.processor = processor
        self.family = family
        self.modalities = modalities
        self.style = templates.template_style(processor)
        tokenizer = getattr(processor, "tokenizer", processor)
        bos = getattr(tokenizer, "bos_token", None)
        self.bos = bos if isinstance(bos, str) and bos else None
        self.adds_bos = self.bos is not None and _adds_bos(tokenizer)
        self.image_token = templates.placeholder(processor, "image")

    @property
    def untemplated(self) -> bool:
        """Whether the family (or the generic question) writes the prompt, not a template."""
        return self.family.prompt is not None or self.style == templates.UNTEMPLATED

    @property
    def converses(self) -> bool:
        """Whether the checkpoint reads a conversation of pictures: only a template of typed
        parts places each picture where it was shown (a plain-string one places one picture,
        in the first user turn; a prompt-style checkpoint takes one picture and a question)."""
        return not self.untemplated and self.style == templates.PARTS

    def render(self, request: ModelRequest, audio_clips: int = 1) -> Prompt:
        if self.untemplated:
            count = pictures(request, self.modalities)
            if "image" in self.modalities and count != 1:
                raise InvalidRequest(
                    f"this checkpoint has no chat template (prompt-style, family "
                    f"{self.family.name}): it takes one picture per request, not {count}; "
                    "few-shot examples and several pictures need a chat model")
            return Prompt((self.family.prompt or question)(request))
        shape = self.family.messages or messages
        chat = shape(request, media_parts(request, self.modalities, audio_clips=audio_clips))
        if self.style == templates.STRINGS:
            chat = as_strings(chat)
        text = templates.render(self.processor, chat, tools=tool_specs(request))
        prompt = Prompt(text, special_tokens=not (self.bos and text.startswith(self.bos)))
        if self.style == templates.STRINGS:
            self.check(prompt, pictures(request, self.modalities))
        return prompt

    def check(self, prompt: Prompt, images: int) -> None:
        """One BOS once tokenized, and the image token once per picture: a plain-string
        template places both itself, and a second BOS silently spoils the output."""
        if self.bos is not None:  # at the start only: a ChatML BOS (<|im_start|>) opens turns
            count = _leading(prompt.text, self.bos) + int(self.adds_bos and prompt.special_tokens)
            if count != 1:
                raise EngineError(f"the chat template's prompt would hold {count} BOS tokens "
                                  f"({self.bos}), not one: the checkpoint's template and "
                                  "tokenizer disagree")
        if self.image_token is not None and "image" in self.modalities:
            placed = prompt.text.count(self.image_token)
            if placed != images:
                raise InvalidRequest(
                    f"this checkpoint's chat template places its image token {placed} time(s) "
                    f"but the request has {images} picture(s): it takes plain-string content "
                    "and puts the picture in the first user turn itself, so send exactly "
                    f"{placed} picture(s) and no few-shot examples")


def _leading(text: str, bos: str) -> int:
    """How many times ``text`` starts with ``bos``, one after the other."""
    stripped = text.lstrip()
    count = 0
    while stripped.startswith(bos):
        stripped, count = stripped[len(bos):], count + 1
    return count


def _adds_bos(tokenizer: Any) -> bool:
    try:
        ids = tokenizer("x").input_ids
    except Exception:  # a tokenizer that cannot say: assume it does not
        return False
    return bool(ids) and ids[0] == getattr(tokenizer, "bos_token_id", None)
