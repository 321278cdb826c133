"""Client events of the OpenAI Realtime GA subset we speak, validated with pydantic.

Unknown fields are ignored (clients send a lot we do not use); unknown event types and missing
fields are errors. Extensions live in an object field named ``streamagent``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from agent.errors import InvalidRequest, UnknownEvent
from agent.protocols.common import MediaExtension, StreamagentSession, check_containers

MAX_TOOLS = 64
"""Functions a session or a response may offer (each described to the model in its prompt)."""
TokenCap = Annotated[int, Field(ge=1, le=4096)] | Literal["inf"]
"""``max_output_tokens``: 1-4096, or ``"inf"`` for the model's own limit (as in OpenAI's API)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AudioFormat(_Model):
    type: str = "audio/pcm"
    rate: int = 24000


class Transcription(_Model):
    """``audio.input.transcription``: the model that writes down what the user says."""

    model: str = Field(default="", max_length=128)
    language: str | None = Field(default=None, max_length=16)
    prompt: str | None = Field(default=None, max_length=1024)


class TurnDetection(BaseModel):
    """``audio.input.turn_detection``: every field works or is refused by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = Field(default=0.5, ge=0, le=1)
    prefix_padding_ms: int = Field(default=300, ge=0, le=2000)
    silence_duration_ms: int | None = Field(default=None, ge=100, le=10_000)
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    idle_timeout_ms: None = None
    """Not served: a value is refused (``null`` is the same as leaving it out)."""


class AudioInput(_Model):
    format: AudioFormat | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: Any = None

    @field_validator("turn_detection", mode="before")
    @classmethod
    def _false_is_off(cls, value: Any) -> Any:
        """``false`` (Pipecat's way to use its own turn detection) is ``null``: no server
        VAD, the client commits."""
        return None if value is False else value


class VoiceId(_Model):
    """A voice named as OpenAI names custom voices: ``{"id": …}``."""

    id: str = Field(max_length=64)


class AudioOutput(_Model):
    format: AudioFormat | None = None
    voice: Annotated[str, Field(max_length=64)] | VoiceId | None = None
    speed: float | None = Field(default=None, ge=0.25, le=1.5)


class AudioConfig(_Model):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class FunctionTool(_Model):
    """A client's function (GA and beta: the flat form)."""

    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = Field(default="", max_length=4096)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}})


class McpToolFilter(_Model):
    tool_names: list[str] | None = None
    read_only: bool | None = None


class McpTool(_Model):
    """An MCP server whose tools the server runs (``agent.mcp``); approval is not served."""

    type: Literal["mcp"]
    server_label: str = Field(default="", max_length=64)
    server_url: str | None = Field(default=None, max_length=2048)
    allowed_tools: list[str] | McpToolFilter | None = None
    headers: dict[str, str] | None = None
    require_approval: str | dict[str, McpToolFilter | None] | None = None


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]
Tools = Annotated[list[Tool], Field(max_length=MAX_TOOLS)]


class FunctionChoice(_Model):
    type: Literal["function"]
    name: str


class McpChoice(_Model):
    type: Literal["mcp"]
    server_label: str = ""
    name: str | None = None


Modalities = Annotated[list[Literal["text", "audio"]], Field(max_length=2)]
"""``["text"]``, or ``["audio"]`` (speech and its transcript; ``["text", "audio"]`` too)."""
ToolChoice = str | Annotated[FunctionChoice | McpChoice, Field(discriminator="type")]
"""``auto``, ``none``, ``required``, ``{"type": "function", "name": …}`` (GA), or a function's
name alone (beta)."""


class SessionParams(_Model):
    type: str | None = None
    instructions: str | None = None
    output_modalities: Modalities | None = None
    audio: AudioConfig | None = None
    turn_detection: Any = None
    max_output_tokens: TokenCap | None = None
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    truncation: Any = None
    """``auto``, or ``{"type": "retention_ratio", ...}`` (``context.window``)."""
    streamagent: StreamagentSession | None = None


class InputText(_Model):
    type: Literal["input_text"]
    text: str


class InputImage(_Model):
    type: Literal["input_image"]
    image_url: str
    detail: str | None = None
    streamagent: MediaExtension | None = None


class InputAudio(_Model):
    type: Literal["input_audio"]
    audio: str | None = None
    transcript: str | None = None


ContentPart = Annotated[InputText | InputImage | InputAudio, Field(discriminator="type")]


class Item(_Model):
    id: str | None = Field(default=None, max_length=64)
    type: Literal["message"]
    role: Literal["user", "system", "assistant"] = "user"
    content: list[ContentPart] = Field(max_length=32)


class FunctionCallItem(_Model):
    """A call the model made, as a client syncs its context (LiveKit, the Agents SDK)."""

    id: str | None = Field(default=None, max_length=64)
    type: Literal["function_call"]
    call_id: str = Field(default="", max_length=64)
    name: str = Field(max_length=64)
    arguments: str = "{}"


class FunctionCallOutputItem(_Model):
    """What a client's function returned; the next response continues with it."""

    id: str | None = Field(default=None, max_length=64)
    type: Literal["function_call_output"]
    call_id: str = Field(max_length=64)
    output: str


ITEM_TYPES = ("message", "function_call", "function_call_output")
AnyItem = Annotated[Item | FunctionCallItem | FunctionCallOutputItem,
                    Field(discriminator="type")]


class _Event(_Model):
    event_id: str | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: SessionParams


class AudioAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str
    streamagent: MediaExtension | None = None


class AudioCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class AudioClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: AnyItem
    previous_item_id: str | None = None


ItemId = Annotated[str, Field(min_length=1, max_length=64)]


class ItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: ItemId


class ItemRetrieve(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: ItemId


class ItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: ItemId
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class ResponseParams(_Model):
    instructions: str | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    """As in OpenAI's API: at most 16 pairs, keys of at most 64 characters, string values of at
    most 512."""
    conversation: Literal["auto", "none"] | None = None
    """``none``: an out-of-band response, whose answer does not join the conversation."""
    input: list[AnyItem] | None = Field(default=None, max_length=32)
    """The context of this response instead of the conversation (text messages); the
    conversation's pending text waits for the next response."""
    max_output_tokens: TokenCap | None = None
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    output_modalities: Modalities | None = None
    """This response in text or spoken, whatever the session's."""
    audio: Any = None
    """A voice or format for one response: refused (``session.audio.output`` sets them)."""


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | ItemCreate
    | ItemDelete
    | ItemRetrieve
    | ItemTruncate
    | ResponseCreate
    | ResponseCancel,
    Field(discriminator="type"),
]
EVENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
)
_adapter: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)


def parse_event(message: str | bytes | dict[str, Any]) -> ClientEvent:
    """Parse one client message (JSON text, or an object a dialect has already parsed and
    bounded); raise InvalidRequest / UnknownEvent with a readable message."""
    try:
        if isinstance(message, dict):
            return _adapter.validate_python(message)
        check_containers(message)
        return _adapter.validate_json(message)
    except ValidationError as exc:
        raise _explain(exc) from None


def _explain(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    kind, loc = first["type"], ".".join(str(p) for p in first["loc"])
    if kind == "json_invalid":
        return InvalidRequest(f"message is not valid JSON: {first['msg']}")
    if kind == "union_tag_not_found" and not first["loc"]:
        return InvalidRequest("event has no 'type' field", param="type")
    if kind == "union_tag_invalid" and not first["loc"]:
        tag = first.get("ctx", {}).get("tag", "?")
        return UnknownEvent(
            f"unknown event type {tag!r}; supported: {', '.join(EVENT_TYPES)}", param="type"
        )
    if not first["loc"]:
        return InvalidRequest(f"event must be a JSON object with a 'type': {first['msg']}")
    # Drop the discriminator tag from the path: "session.update.session.x" -> "session.x".
    parts = [str(p) for p in first["loc"][1:]]
    # and an item's type tag: "item.message.content.0" -> "item.content.0"
    parts = [p for i, p in enumerate(parts) if not (p in ITEM_TYPES and i > 0 and (
        parts[i - 1] == "item" or parts[i - 1].isdigit()))]
    param = ".".join(parts) or loc
    return InvalidRequest(f"{param}: {first['msg']}", param=param)
