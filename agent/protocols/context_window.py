"""How a client bounds its session's context, as a bound on the session's timelines
(``agent.timeline.Window``), never wider than each model's configured budget
(``models.NAME.memory``).

- OpenAI Realtime ``session.truncation``: ``"auto"`` (the budget), or ``{"type":
  "retention_ratio", "retention_ratio": r, "token_limits": {"post_instructions": n}}`` (cut past
  ``n`` tokens down to ``r`` of them). ``"disabled"`` is refused: the server bounds every
  session's context.
- Gemini Live ``setup.contextWindowCompression``: ``{"triggerTokens": n, "slidingWindow":
  {"targetTokens": k}}`` (cut past ``n`` tokens, default the budget, down to ``k``, default
  ``n / 2``, as Gemini's own defaults are).
"""

from __future__ import annotations

from typing import Any

from agent.errors import InvalidRequest
from agent.timeline import Window

PARAM = "session.truncation"
GEMINI = "setup.contextWindowCompression"


def window(truncation: Any) -> Window | None:
    """``session.truncation`` as a window (``None``: not sent, no change)."""
    if truncation is None:
        return None
    if truncation == "auto":
        return Window()
    if truncation == "disabled":
        raise InvalidRequest("truncation 'disabled' is not served: every session's context is "
                             "bounded by the server (models.NAME.memory); use 'auto' or "
                             "retention_ratio", param=PARAM)
    if not isinstance(truncation, dict) or truncation.get("type") != "retention_ratio":
        raise InvalidRequest("truncation must be 'auto' or {'type': 'retention_ratio', ...}",
                             param=PARAM)
    unknown = set(truncation) - {"type", "retention_ratio", "token_limits"}
    if unknown:
        raise InvalidRequest(f"unknown truncation fields {sorted(unknown)}", param=PARAM)
    ratio = truncation.get("retention_ratio")
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio < 1:
        raise InvalidRequest("truncation.retention_ratio must be a number between 0 and 1 "
                             "(exclusive)", param=f"{PARAM}.retention_ratio")
    limits = truncation.get("token_limits") or {}
    top = limits.get("post_instructions") if isinstance(limits, dict) else limits
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 64):
        raise InvalidRequest("truncation.token_limits.post_instructions must be a whole number "
                             "of tokens, at least 64", param=f"{PARAM}.token_limits")
    return Window(max_tokens=top, retention_ratio=float(ratio))


def truncation_object(current: Window) -> Any:
    """The session's ``truncation`` as ``session.updated`` shows it."""
    if current == Window():
        return "auto"
    out: dict[str, Any] = {"type": "retention_ratio", "retention_ratio": current.retention_ratio}
    if current.max_tokens is not None:
        out["token_limits"] = {"post_instructions": current.max_tokens}
    return out


def compression(config: Any) -> Window | None:
    """Gemini's ``contextWindowCompression`` as a window (``None``: not sent). Its token counts
    are int64, which JSON clients may send as strings."""
    if config is None:
        return None
    sliding = config.get("slidingWindow", config.get("sliding_window")) if isinstance(
        config, dict) else None
    if not isinstance(sliding, dict):
        raise InvalidRequest("contextWindowCompression needs slidingWindow (the only "
                             "compression Gemini Live defines)", param=GEMINI)
    trigger = _tokens(config.get("triggerTokens", config.get("trigger_tokens")),
                      "triggerTokens", least=64)
    target = _tokens(sliding.get("targetTokens", sliding.get("target_tokens")),
                     "slidingWindow.targetTokens", least=1)
    if trigger is not None and target is not None and target >= trigger:
        raise InvalidRequest(f"slidingWindow.targetTokens ({target}) must be below "
                             f"triggerTokens ({trigger})", param=GEMINI)
    return Window(max_tokens=trigger, keep_tokens=target,
                  retention_ratio=0.5 if target is None else None)


def _tokens(value: Any, field: str, least: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise InvalidRequest(f"contextWindowCompression.{field} must be a whole number of "
                             f"tokens, at least {least}", param=f"{GEMINI}.{field}")
    return value
