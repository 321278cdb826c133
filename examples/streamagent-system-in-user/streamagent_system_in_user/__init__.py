"""A model family for checkpoints whose chat template has no system role.

Several published chat templates raise on a ``system`` message (some Mistral, Gemma and LLaVA
templates: "Conversation roles must alternate user/assistant/..."). The generic path sends the
session's instructions as a system turn, so such a checkpoint fails on the first request that
has instructions. This family moves the instructions to the front of the first user turn
instead, and changes nothing else: loading, processor and decoding stay generic.

Use it with ``family: system-in-user`` in a model's config, or
``streamagent serve --source DIR --family system-in-user``.
"""

from __future__ import annotations

from typing import Any

from agent import Family, Messages, ModelRequest, hookimpl, messages


def fold_instructions(request: ModelRequest, media: Messages) -> Messages:
    """The generic chat, with the system turn's text put before the first user turn's."""
    chat = messages(request, media)
    if not chat or chat[0]["role"] != "system":
        return chat
    system, rest = chat[0], chat[1:]
    first = rest[0]  # messages() always ends with the user's turn
    text = {"type": "text", "text": system["content"][0]["text"] + "\n\n"}
    return [{**first, "content": [text, *first["content"]]}, *rest[1:]]


@hookimpl
def register_families(register: Any) -> None:
    register(Family("system-in-user", messages=fold_instructions))
