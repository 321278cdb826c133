"""MiniCPM-V 2.6 / MiniCPM-o 2.6 prompts for engines that render them (vLLM).

Their tokenizers' chat template (ChatML) takes each message's content as one string; their
own ``chat()`` writes each picture, video and audio clip there as a placeholder that the
processor expands: ``(<image>./</image>)``, ``(<video>./</video>)``, ``(<audio>./</audio>)``,
then the text, joined by newlines. vLLM's native MiniCPM-V / MiniCPM-o expand the same
placeholders, so the family's ``messages`` writes them the same way.
"""

from __future__ import annotations

from typing import Any

from agent import Messages, ModelRequest
from agent import messages as chat_messages

PLACEHOLDERS = {"image": "(<image>./</image>)", "video": "(<video>./</video>)",
                "audio": "(<audio>./</audio>)"}


def messages(request: ModelRequest, content: Messages) -> Messages:
    """The generic chat, each message's typed parts written as MiniCPM's ``chat()`` does."""
    return [{**m, "content": as_string(m["content"])} if isinstance(m.get("content"), list)
            else m for m in chat_messages(request, content)]


def as_string(parts: list[dict[str, Any]]) -> str:
    pieces = [PLACEHOLDERS.get(p.get("type", ""), p.get("text", "")) for p in parts]
    return "\n".join(p for p in pieces if p)
