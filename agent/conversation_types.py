"""The value types of a conversation's commands: its settings' changes, the content of its
messages and its requests for a response."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.engine import Tool, Turn
from agent.server_tools import ServerTool
from agent.timeline import Window
from agent.transcripts import Vad
from agent.voice import SpeechChange
from agent.watches import Watch

UNCHANGED: Any = object()


@dataclass(frozen=True, slots=True)
class Settings:
    """A change of the conversation's settings; what is left out stays as it is. Everything is
    checked before anything changes."""

    instructions: str | None = None
    audio_rate: int | None = None
    max_output_tokens: int | None = UNCHANGED
    """A cap on every response's tokens; ``None``: the models' own limits."""
    live: bool | None = None
    sample_fps: float | None = None
    video_window_s: float | None = None
    handlers: list[str] | None = None
    models: dict[str, str] | None = None
    lora: str | None = None
    """A LoRA adapter of the conversation's models; ``""``: none."""
    watches: tuple[Watch, ...] | None = None
    """The conditions to watch for (all of them: they replace the ones before)."""
    tools: tuple[Tool, ...] | None = None
    """The client's functions, offered to every response (``()``: none)."""
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    memory: bool | None = None
    """Whether LLM handlers and questions render from the session's timeline (``False``:
    each call is prompted afresh, and the timelines are forgotten)."""
    window: Window | None = None
    """The client's bound on the timelines (within each model's budget)."""
    speech: SpeechChange | None = None
    server_tools: list[str] | None = None
    """Tools the server runs itself, offered to the model in questions (``[]``: none)."""
    mcp_tools: dict[str, ServerTool] | None = None
    """The tools of the session's MCP servers (``agent.mcp``), connected and listed."""
    transcription: str | None = None
    """The model that transcribes what the user says (``""``: none)."""
    vad: Vad | None = UNCHANGED
    """Server VAD (``None``: the client commits its turns)."""
    """Whether responses are spoken, and how (voice, speed, rate, encoding)."""


@dataclass(frozen=True, slots=True)
class Image:
    """A picture as sent: a data URL, at ``ts`` seconds of media time (``None``: now)."""

    url: str
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class Sound:
    """Base64 PCM16 at the conversation's audio rate, heard as one utterance."""

    pcm16: str


Content = str | Image | Sound


@dataclass(frozen=True, slots=True)
class Ask:
    """A request for one response (question mode)."""

    instructions: str | None = None
    metadata: dict[str, str] | None = None
    remember: bool = True
    """Whether the answer joins the conversation (``False``: out of band)."""
    context: tuple[Turn, ...] | None = None
    """The messages this response answers instead of the conversation (the last user turn is
    the question); the conversation's pending text then waits."""
    max_output_tokens: int | None = None
    tools: tuple[Tool, ...] | None = None
    """This response's functions instead of the session's."""
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    speak: bool | None = None
    """Whether this response is spoken (``None``: as the conversation's speech says)."""
