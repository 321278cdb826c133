"""streamagent: the public API that plugins import."""

from agent.config import Config, HandlerConfig, ModelConfig, ProfileConfig, ServerConfig
from agent.engine import Engine, ModelRequest, ThreadedEngine, Turn, Usage, iterate_in_thread
from agent.errors import (
    ConfigError,
    EngineError,
    InvalidMedia,
    InvalidRequest,
    StreamAgentError,
)
from agent.families import ChatCall, Family
from agent.handler import Handler, HandlerContext, Mailbox, Question
from agent.hookspecs import hookimpl, hookspec
from agent.media import AUDIO_RATE, Frame, Modality, Window
from agent.pool import LocalPool, Pool

__all__ = [
    "AUDIO_RATE",
    "ChatCall",
    "Config",
    "ConfigError",
    "Engine",
    "EngineError",
    "Family",
    "Frame",
    "Handler",
    "HandlerConfig",
    "HandlerContext",
    "InvalidMedia",
    "InvalidRequest",
    "LocalPool",
    "Mailbox",
    "ModelConfig",
    "ModelRequest",
    "Modality",
    "Pool",
    "ProfileConfig",
    "Question",
    "ServerConfig",
    "StreamAgentError",
    "ThreadedEngine",
    "Turn",
    "Usage",
    "Window",
    "hookimpl",
    "hookspec",
    "iterate_in_thread",
]
