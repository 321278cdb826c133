"""What every protocol shares at its edge: the ``streamagent`` extension objects and the bound
on JSON containers checked before a message is parsed."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from agent.conversation import Settings
from agent.errors import InvalidRequest
from agent.watches import MAX_WATCHES, WatchSpec


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class MediaExtension(_Model):
    """``streamagent`` on a frame or audio chunk: its media timestamp in seconds."""

    timestamp: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class StreamagentSession(_Model):
    """The ``streamagent`` object of ``session.update``: what the OpenAI standard lacks."""

    live: bool | None = None
    sample_fps: float | None = Field(default=None, gt=0, le=30)
    handlers: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None,
                                                                        max_length=32)
    video_window_s: float | None = Field(default=None, gt=0, le=600)
    models: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=128)]] \
        | None = Field(default=None, max_length=32)
    lora: str | None = Field(default=None, max_length=128)
    """A LoRA adapter of the session's models (``options.lora`` in their config); ``""``: none."""
    watches: list[WatchSpec] | None = Field(default=None, max_length=MAX_WATCHES)
    """Conditions to watch for (``agent.watches``); replaces the session's watches."""
    memory: bool | None = None
    """Whether LLM handlers and questions render from the session's timeline (default on)."""
    server_tools: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, max_length=32)
    """Tools the server runs itself (``agent.server_tools``) offered to the session's model;
    ``[]``: none."""
    echo_media: bool | None = None
    """Realtime only: whether ``conversation.item.added`` / ``.done`` (beta:
    ``conversation.item.created``) show a picture's ``image_url`` and a sound's ``audio`` as
    the client sent them (default on, as OpenAI's events show an item's content). Off: the
    content parts come back without their data, as OpenAI already sends audio; a camera
    client then downloads none of its own frames again."""


MAX_JSON_CONTAINERS = 65_536
"""Objects and arrays one client message may open (every ``{`` and ``[``, strings included).
Parsing allocates each on the event loop, which every session shares: a 4 MB message of a
million empty arrays held it 0.35 s; an 8 MB picture event parses in 1 ms."""


def check_containers(message: str | bytes, limit: int = MAX_JSON_CONTAINERS) -> None:
    """Refuse a message that opens more than ``limit`` objects and arrays, before parsing it
    (counting 8 MB takes 6 ms; a message shorter than 2 x ``limit`` cannot open that many)."""
    if len(message) <= 2 * limit:
        return
    opens = (message.count("{") + message.count("[") if isinstance(message, str)
             else message.count(b"{") + message.count(b"["))
    if opens > limit:
        raise InvalidRequest(f"message opens {opens} JSON objects and arrays (counting '{{' and "
                             f"'[' in strings too); at most {limit}")


def extension(ext: StreamagentSession | None, base: Settings) -> Settings:
    """``base`` with what a ``streamagent`` object changes."""
    if ext is None:
        return base
    return replace(base, live=ext.live, sample_fps=ext.sample_fps,
                   video_window_s=ext.video_window_s, handlers=ext.handlers, models=ext.models,
                   lora=ext.lora, watches=None if ext.watches is None
                   else tuple(spec.watch() for spec in ext.watches),
                   server_tools=ext.server_tools, memory=ext.memory)
