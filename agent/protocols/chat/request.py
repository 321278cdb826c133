"""A chat completions request: its wire shape (pydantic) and its conversion to one model
request, every input counted and bounded before anything is decoded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import media_files
from agent.config import ServerConfig
from agent.engine import ModelRequest, Tool, ToolCall, Turn, check_tools
from agent.errors import InvalidRequest, LimitExceeded
from agent.media import RGB, Audio


class _M(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Url(_M):
    url: str


class TextPart(_M):
    type: Literal["text"]
    text: str


class ImagePart(_M):
    type: Literal["image_url"]
    image_url: _Url | str


class VideoPart(_M):
    type: Literal["video_url"]
    video_url: _Url | str


class _AudioData(_M):
    data: str
    format: str = "wav"


class AudioPart(_M):
    type: Literal["input_audio"]
    input_audio: _AudioData


class AudioUrlPart(_M):
    type: Literal["audio_url"]
    audio_url: _Url | str


Part = Annotated[TextPart | ImagePart | VideoPart | AudioPart | AudioUrlPart,
                 Field(discriminator="type")]


MAX_TOOLS = 64
"""Functions in a request, and calls in one message."""
MAX_PARTS = 128
"""Content parts in one message. Validation holds the event loop (pydantic keeps the GIL): an
8 MB body of 270 000 empty text parts held it 1.1 s, refused at this bound 0.34 s."""


class _Function(_M):
    name: str = Field(max_length=64)
    arguments: str = "{}"


class ToolCallIn(_M):
    """A call the model made earlier, as the client sends it back."""

    id: str = Field(max_length=64)
    type: Literal["function"] = "function"
    function: _Function


class Message(_M):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[Part], Field(max_length=MAX_PARTS)] | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: str | None = Field(default=None, max_length=64)


class FunctionSpec(_M):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = Field(default="", max_length=4096)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}})


class _VoiceId(_M):
    id: str = Field(max_length=64)


class ChatAudio(_M):
    """``audio`` with ``modalities: ["text", "audio"]``: the voice and the format."""

    voice: Annotated[str, Field(max_length=64)] | _VoiceId = "alloy"
    format: Literal["wav", "pcm16", "mp3", "flac", "opus", "aac"] = "wav"

    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id


class ChatTool(_M):
    type: Literal["function"]
    function: FunctionSpec


class _Named(_M):
    name: str


class NamedChoice(_M):
    type: Literal["function"]
    function: _Named


class StreamOptions(_M):
    include_usage: bool = False


class ChatRequest(_M):
    model: str
    messages: list[Message] = Field(min_length=1, max_length=256)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    """A 64-bit integer, as vLLM's own server takes: its model runner seeds a torch generator
    with it, which fails (in the engine, for every request of the batch) past 64 bits."""
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    """Up to 4 sequences, as in OpenAI's API (each is looked for in every delta)."""
    n: Literal[1] = 1
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: ChatAudio | None = None
    tools: Annotated[list[ChatTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedChoice | None = None
    parallel_tool_calls: bool = True

    def choice(self) -> str:
        """``tool_choice`` as a name: ``auto`` (the default with tools), ``none``,
        ``required`` or a function's name."""
        if isinstance(self.tool_choice, NamedChoice):
            return self.tool_choice.function.name
        return self.tool_choice or "auto"



def explain(exc: ValidationError) -> tuple[str, str | None]:
    """A validation error as (message, param): the error of the union branch that got furthest
    into the input (a list of parts with a bad part, not "should be a valid string"; at equal
    depth, a broken rule before a wrong type), its path without pydantic's branch names."""
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
    parts: list[str] = []
    for p in map(str, first["loc"]):
        if "[" in p or p in ("str", "int", "float", "bool") or p[:1].isupper() or \
                p.startswith("_") or (parts and parts[-1] == p):
            continue  # a branch's type name, or a tag repeated as its field
        parts.append(p)
    where = ".".join(parts) or None
    return (f"{where}: {first['msg']}" if where else str(first["msg"])), where


class Builder:
    """ChatRequest -> ModelRequest under the server's limits."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.policy = media_files.MediaPolicy.of(cfg)
        self.limits = media_files.Limits.of(cfg)

    def __call__(self, chat: ChatRequest) -> ModelRequest:
        """System text -> instructions, earlier turns -> history, every image in user turns
        -> images, the video and audio, the last user text -> prompt. Decoding and fetching
        block: run in a thread."""
        last_user = max((i for i, m in enumerate(chat.messages) if m.role == "user"),
                        default=None)
        if last_user is None:
            raise InvalidRequest("messages need a user message", param="messages")
        self.check(chat)
        # after the question, the model's calls and their outputs: the answer goes on from
        # them, the question stays in its place in the history
        continues = any(m.role in ("assistant", "tool") for m in chat.messages[last_user:])
        instructions, history = [], []
        images: list[RGB] = []
        video: tuple[RGB, ...] = ()
        audio: Audio | None = None
        for i, msg in enumerate(chat.messages):
            parts = _parts(msg)
            text = " ".join(p.text for p in parts if isinstance(p, TextPart))
            if msg.role in ("system", "developer"):
                instructions.append(text)
            elif msg.role == "tool":
                history.append(Turn("tool", text, call_id=msg.tool_call_id or ""))
            elif msg.role == "assistant" and msg.tool_calls:
                history.append(Turn("assistant", text, tool_calls=tuple(
                    ToolCall(c.id, c.function.name, c.function.arguments)
                    for c in msg.tool_calls)))
            elif (i != last_user or continues) and msg.role in ("user", "assistant") and text:
                history.append(Turn(msg.role, text))
            if msg.role != "user":
                continue
            for j, part in enumerate(parts):
                where = f"messages.{i}.content.{j}"
                if isinstance(part, ImagePart):
                    images.append(media_files.image(self._load(part.image_url, where), where,
                                                    self.limits))
                elif isinstance(part, VideoPart):
                    video = media_files.video(self._load(part.video_url, where), where,
                                              self.limits)
                elif isinstance(part, AudioPart | AudioUrlPart):
                    url = part.input_audio.data if isinstance(part, AudioPart) else part.audio_url
                    audio = media_files.audio(self._load(url, where), where, self.limits)
        prompt = "" if continues else " ".join(
            p.text for p in _parts(chat.messages[last_user]) if isinstance(p, TextPart))
        tools = tuple(Tool(t.function.name, t.function.description, t.function.parameters)
                      for t in chat.tools or ())
        check_tools(tools, chat.choice(), "tool_choice")
        return ModelRequest(prompt=prompt, instructions="\n".join(instructions),
                            images=tuple(images), video=video, video_fps=1.0, audio=audio,
                            history=tuple(history), options=_options(chat), tools=tools,
                            tool_choice=chat.choice(),
                            parallel_tool_calls=chat.parallel_tool_calls)

    def check(self, chat: ChatRequest) -> None:
        """Count text and media parts against the limits, before any decoding."""
        parts = [p for m in chat.messages for p in _parts(m)]
        text = sum(len(p.text) for p in parts if isinstance(p, TextPart))
        counts = [
            (text, self.cfg.max_request_text_chars, "max_request_text_chars", "characters"),
            (sum(isinstance(p, ImagePart) for p in parts), self.cfg.max_request_images,
             "max_request_images", "images"),
            (sum(isinstance(p, VideoPart) for p in parts), self.cfg.max_request_videos,
             "max_request_videos", "videos"),
            (sum(isinstance(p, AudioPart | AudioUrlPart) for p in parts),
             self.cfg.max_request_audios, "max_request_audios", "audio clips"),
        ]
        for count, limit, field, what in counts:
            if count > limit:
                raise LimitExceeded(f"{count} {what} in the request; the limit is {limit} "
                                    f"(server.{field})", param="messages")

    def _load(self, value: _Url | str, where: str) -> bytes:
        return self.policy.load(value.url if isinstance(value, _Url) else value, where)


def _parts(msg: Message) -> list[Any]:
    if isinstance(msg.content, str):
        return [TextPart(type="text", text=msg.content)]
    return list(msg.content or [])


def _options(chat: ChatRequest) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if chat.temperature is not None:
        opts["do_sample"] = chat.temperature > 0
        if chat.temperature > 0:
            opts["temperature"] = chat.temperature
    if chat.top_p is not None:
        opts["top_p"] = chat.top_p
    limit = chat.max_completion_tokens or chat.max_tokens
    if limit is not None:
        opts["max_new_tokens"] = limit
        opts["min_new_tokens"] = 0
    if chat.seed is not None:
        opts["seed"] = chat.seed
    if chat.stop:  # the engine stops there and counts the tokens (the answer is cut here too)
        opts["stop"] = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop)
    return opts


