"""Server events of the OpenAI Realtime GA protocol, as plain dicts ready for ``json.dumps``."""

from __future__ import annotations

from typing import Any

from agent import metrics
from agent.errors import StreamAgentError
from agent.ids import new_id


def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "event_id": new_id("event"), **fields}


def error(exc: StreamAgentError, client_event_id: str | None = None) -> dict[str, Any]:
    metrics.errors.inc(code=exc.code)
    return event(
        "error",
        error={
            "type": exc.type,
            "code": exc.code,
            "message": exc.message,
            "param": exc.param,
            "event_id": client_event_id,
        },
    )


def session_object(session_id: str, model: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
            **config}


def message_item(item_id: str, text: str, status: str, role: str = "assistant",
                 spoken: bool = False) -> dict[str, Any]:
    """A message; ``spoken``: an assistant's audio, shown by its transcript ``text``."""
    content_type = "output_text" if role == "assistant" else "input_text"
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": role,
        "content": [{"type": "output_audio", "transcript": text} if spoken
                    else {"type": content_type, "text": text}],
    }


def response_object(
    response_id: str,
    status: str,
    metadata: dict[str, str],
    output: list[dict[str, Any]],
    status_details: dict[str, Any] | None = None,
    output_tokens: int = 0,
    input_tokens: int = 0,
    cached_tokens: int = 0,
    spoken: bool = False,
) -> dict[str, Any]:
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output,
        "metadata": metadata,
        "output_modalities": ["audio"] if spoken else ["text"],
        "usage": {"total_tokens": input_tokens + output_tokens, "input_tokens": input_tokens,
                  "output_tokens": output_tokens,
                  "input_token_details": {"cached_tokens": cached_tokens}},
    }
