"""Tool calls in a model's output: how each model family writes them, found while streaming.

(Being written: the streaming parser, the enforced-choice schema and the stream wrapper.)
"""

from __future__ import annotations

FORMATS = ("hermes", "llama3_json", "mistral")


def detect_format(chat_template: str | None) -> str | None:
    """How a model writes tool calls, from its chat template: ``hermes`` (Qwen, Hermes:
    ``<tool_call>{json}</tool_call>``), ``mistral`` (``[TOOL_CALLS]``), ``llama3_json`` (Llama
    3.1+: a bare JSON object, maybe after ``<|python_tag|>``); ``None``: its template renders
    no tools."""
    if not chat_template or "tools" not in chat_template:
        return None
    if "<tool_call>" in chat_template:
        return "hermes"
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    if "<|python_tag|>" in chat_template or "ipython" in chat_template:
        return "llama3_json"
    return "hermes"
