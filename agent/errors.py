"""The error hierarchy. Each error knows its wire code and whether a retry may help.

Only the session maps these to the wire (an ``error`` event, or a close code when fatal).
"""

from __future__ import annotations

from typing import ClassVar


class StreamAgentError(Exception):
    """Base of every error the gateway reports to a client."""

    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "server_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(StreamAgentError):
    """A client event that cannot be acted on: bad JSON, unknown type, missing field."""

    type = "invalid_request_error"
    code = "invalid_request"


class UnknownEvent(InvalidRequest):
    code = "unknown_event"


class InvalidMedia(InvalidRequest):
    """A frame or audio chunk that cannot be decoded (corrupt JPEG, odd-length PCM16, ...)."""

    code = "invalid_media"


class LimitExceeded(InvalidRequest):
    """An input over a configured limit; the message names the config field."""

    code = "limit_exceeded"


class RateLimited(InvalidRequest):
    code = "rate_limit_exceeded"
    retryable = True


class ConversationBusy(InvalidRequest):
    """A second ``response.create`` while a question-mode response is still in progress."""

    code = "conversation_already_has_active_response"

    @classmethod
    def about(cls, response_id: str) -> ConversationBusy:
        return cls(f"conversation already has an active response in progress: {response_id}. "
                   "Wait until the response is finished before creating a new one.")


class NoActiveResponse(InvalidRequest):
    code = "response_cancel_not_active"


class UnknownModel(InvalidRequest):
    code = "model_not_found"


class EngineError(StreamAgentError):
    """A model engine failed while generating. The session stays open."""

    code = "engine_error"
    retryable = True


class Overloaded(StreamAgentError):
    """A model's queue is full: the request is refused before any work is done."""

    code = "model_overloaded"
    retryable = True


class SessionStalled(Exception):
    """The client stopped reading: its outbox stayed full past the configured time."""


class HandlerFailed(StreamAgentError):
    """A handler could not start for this session (its constructor raised)."""

    code = "handler_failed"


class WebhookFailed(StreamAgentError):
    """A watch's firing could not be POSTed to its webhook after the last try."""

    code = "webhook_failed"
    retryable = True


class ConfigError(Exception):
    """Bad configuration, found at start-up (never mid-session)."""
