"""streamagent: the public API that plugins import (and only this: ``__all__``, listed in
docs/plugin-hooks.md; tests/test_plugin_api.py holds plugins/ and examples/ to it)."""

from agent import long_audio
from agent.adapters import AdapterGate, requested_adapter
from agent.audio import float_to_pcm16, wav_bytes
from agent.config import (
    Config,
    HandlerConfig,
    ModelConfig,
    ProfileConfig,
    ServerConfig,
    VoiceConfig,
)
from agent.engine import (
    Engine,
    Entry,
    ModelRequest,
    ThreadedEngine,
    Tool,
    ToolCall,
    Turn,
    iterate_in_thread,
)
from agent.errors import (
    ConfigError,
    EngineError,
    InvalidMedia,
    InvalidRequest,
    StreamAgentError,
)
from agent.families import (
    GENERIC,
    ChatCall,
    Family,
    Messages,
    decoding,
    family_for_type,
    family_of,
    fit,
    learn_modalities,
    media_parts,
    messages,
    pad_frames,
    sequence_media,
    subsample,
    video_metadata,
)
from agent.handler import (
    Handler,
    HandlerContext,
    Mailbox,
    Question,
    ResponseOptions,
    SessionOptions,
)
from agent.hookspecs import hookimpl, hookspec
from agent.media import AUDIO_RATE, RGB, Audio, Frame, Modality, Window
from agent.options import Options, check_options
from agent.parts import (
    AudioChunk,
    Part,
    TextDelta,
    ToolCallDelta,
    ToolOutput,
    Usage,
    as_part,
    text_only,
    total_usage,
)
from agent.plugins import installed_families
from agent.pool import LocalPool, Pool
from agent.prompts import Prompt, Prompter
from agent.server_tools import ServerTool, ToolContext, ToolResult
from agent.timeline import Timeline, content_key, frame_key
from agent.token_pieces import TokenPieces
from agent.toolcalls import detect_format
from agent.vad import Segmenter, Utterance, load_vad
from agent.voice import Voice, chunked

__all__ = [
    "AdapterGate",
    "AUDIO_RATE",
    "Audio",
    "AudioChunk",
    "ChatCall",
    "Config",
    "ConfigError",
    "Engine",
    "EngineError",
    "Entry",
    "Family",
    "Frame",
    "GENERIC",
    "Handler",
    "HandlerConfig",
    "HandlerContext",
    "InvalidMedia",
    "InvalidRequest",
    "LocalPool",
    "Mailbox",
    "Messages",
    "Modality",
    "ModelConfig",
    "ModelRequest",
    "Part",
    "Options",
    "check_options",
    "requested_adapter",
    "wav_bytes",
    "float_to_pcm16",
    "chunked",
    "Prompt",
    "Prompter",
    "Pool",
    "ProfileConfig",
    "Question",
    "RGB",
    "ResponseOptions",
    "Segmenter",
    "ServerConfig",
    "ServerTool",
    "SessionOptions",
    "StreamAgentError",
    "TextDelta",
    "ThreadedEngine",
    "Timeline",
    "TokenPieces",
    "ToolCallDelta",
    "ToolContext",
    "ToolOutput",
    "ToolResult",
    "Tool",
    "ToolCall",
    "Turn",
    "Usage",
    "Utterance",
    "Voice",
    "VoiceConfig",
    "Window",
    "as_part",
    "content_key",
    "decoding",
    "detect_format",
    "family_for_type",
    "family_of",
    "fit",
    "frame_key",
    "hookimpl",
    "hookspec",
    "installed_families",
    "iterate_in_thread",
    "learn_modalities",
    "load_vad",
    "long_audio",
    "media_parts",
    "messages",
    "pad_frames",
    "sequence_media",
    "subsample",
    "text_only",
    "total_usage",
    "video_metadata",
]
