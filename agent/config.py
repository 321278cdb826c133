"""The configuration: one typed tree, read once at start-up (YAML file and CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import ConfigError


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Config):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: str | None = None
    """When set, clients must send ``Authorization: Bearer KEY`` (HTTP 401 otherwise)."""
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest websocket message accepted; a larger one closes the socket with code 1009."""
    max_sessions: int = Field(default=64, ge=1)
    """Open sessions at once; the next client is refused with HTTP 503."""
    max_frames_per_s: float = Field(default=60.0, gt=0)
    """Frames accepted per second per session; the excess is dropped with an error event."""
    max_history: int = Field(default=32, ge=0)
    """Conversation turns kept per session."""
    max_concurrent_requests: int = Field(default=16, ge=1)
    """Chat completions in flight at once; the next gets HTTP 503."""
    media_dirs: list[str] = []
    """Directories whose files chat requests may name by path (none by default)."""
    fetch_urls: bool = False
    """Whether chat requests may name http(s) media URLs (public addresses only)."""
    tls_certfile: str | None = None
    """Serve https/wss with this certificate (PEM); browsers allow cameras only on secure
    origins, so this is how a phone on the network reaches the camera page."""
    tls_keyfile: str | None = None
    ping_interval_s: float = Field(default=20.0, gt=0)
    shutdown_timeout_s: float = Field(default=5.0, ge=0)
    slow_client_timeout_s: float = Field(default=10.0, gt=0)
    """A session whose client leaves its outbox full this long is closed (code 1008)."""
    read_timeout_s: float = Field(default=30.0, gt=0)
    """A request's headers (HTTP or websocket upgrade) must arrive within this, or the
    connection is closed; a chat request's body too, or HTTP 408."""
    max_outbox_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """JSON of the events waiting for one client (besides at most 256 of them); one larger
    event waits alone. Generation waits while they are full."""
    max_item_text_chars: int = Field(default=32_768, ge=1)
    """Text in one ``conversation.item.create`` or ``instructions``; longer is refused."""
    max_pending_text_chars: int = Field(default=65_536, ge=1)
    """User text waiting for ``response.create`` per session; more is refused."""
    max_audio_s_per_s: float = Field(default=2.0, gt=0)
    """Audio a session may send per second of wall clock (bursts up to 10 s ahead)."""
    heap_trim_interval_s: float = Field(default=2.0, ge=0)
    """Memory freed by ended sessions and requests goes back to the OS this long after they end
    (glibc's ``malloc_trim``; 0 turns it off)."""
    access_log: bool = False
    """Log one line per HTTP request and websocket handshake (logger ``streamagent.access``):
    client, method, path, status, milliseconds."""

    # --- Chat completions and Gemini: limits on one request, checked before decoding ---
    max_request_images: int = Field(default=8, ge=0)
    """Images in one chat request (all messages together)."""
    max_image_pixels: int = Field(default=2048 * 2048, ge=1)
    """Pixels of one chat image, read from its header before it is decoded."""
    max_request_videos: int = Field(default=1, ge=0)
    """Videos in one chat request."""
    max_video_frames: int = Field(default=64, ge=1)
    """Frames a chat video gives the model (sampled at 1 fps, evenly thinned past this)."""
    max_video_pixels: int = Field(default=1920 * 1080, ge=1)
    """Pixels of one frame of a chat video, from its header and again per decoded frame."""
    max_video_s: float = Field(default=120.0, gt=0)
    """Length of a chat video, from its header; decoding also stops there."""
    max_request_audios: int = Field(default=1, ge=0)
    """Audio clips in one chat request."""
    max_audio_s: float = Field(default=120.0, gt=0)
    """Length of a chat audio clip, from its header; decoding also stops there."""
    max_audio_rate: int = Field(default=48000, ge=8000)
    """Sample rate of a chat audio clip, from its header."""
    max_request_text_chars: int = Field(default=200_000, ge=1)
    """Characters of text in one chat request (all messages together)."""
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    """Time for one media URL fetch (``fetch_urls``), connect to last byte."""
    fetch_max_redirects: int = Field(default=3, ge=0)
    """Redirects followed per media URL; each target is checked like the first URL."""
    fetch_allow_hosts: list[str] = []
    """Addresses or networks (CIDR) a fetch may reach although they are private or local."""
    mcp_servers: list[str] = []
    """URL prefixes of the MCP servers a realtime session may name in a ``{"type": "mcp"}``
    tool (none: MCP tools are refused). Each URL is checked like a fetch: a host resolving to
    a private or local address needs ``fetch_allow_hosts`` too."""
    webhooks: bool = False
    """Whether watches may POST their firings to a ``webhook`` URL (public addresses only,
    unless ``fetch_allow_hosts`` lists one)."""
    gemini_setup_timeout_s: float = Field(default=10.0, gt=0)
    """Time a Gemini socket has to send ``setup``; it is then closed with code 1008."""
    voice: str | None = None
    """The voice that speaks when a session asks for audio and names none, or names one of
    OpenAI's or Gemini's own voices (``alloy``, ``Puck``, ...); ``None``: the first registered
    voice by name (``flite``: flite's kal16)."""


class GenerationConfig(_Config):
    """Decoding defaults, as in the MiniCPM-V demo: sampling or beam search."""

    max_new_tokens: int = Field(default=128, ge=1)
    min_new_tokens: int = Field(default=0, ge=0)
    do_sample: bool = False
    temperature: float = Field(default=0.7, gt=0)
    top_p: float = Field(default=0.8, gt=0, le=1)
    top_k: int = Field(default=100, ge=0)
    repetition_penalty: float = Field(default=1.05, gt=0)
    num_beams: int = Field(default=1, ge=1)
    """Beam search when > 1 (text then arrives when the search ends, not token by token)."""


class MemoryConfig(_Config):
    """A session's timeline for one model (``agent.timeline``): its budget, and what a cut
    keeps. Past either bound, the oldest part goes in one cut, down to ``retention_ratio`` of
    both."""

    max_frames: int = Field(default=128, ge=2)
    """Frames (and sounds) the timeline holds; each is kept decoded (640x480: 0.9 MB)."""
    max_tokens: int = Field(default=16384, ge=64)
    """Prompt tokens the timeline may take (approximate: counted by the engine at each call,
    estimated for what came since); keep it under the model's context length."""
    retention_ratio: float = Field(default=0.5, gt=0, lt=1)
    """What a cut keeps of both bounds (the newest part); lower: rarer cuts, less memory."""


class ModelConfig(_Config):
    engine: str
    """The engine kind that runs it (``rapidocr``, ``transformers``, ``vllm``, ...)."""
    family: str | None = None
    """The model family, for engines that serve several (``qwen2-vl``, ``minicpm-v``, ...)."""
    source: str | None = None
    """A local directory or a hub id, for engines that load checkpoints."""
    device: str = "cpu"
    """``cuda``, ``cuda:1``, ``mps`` or ``cpu``."""
    dtype: str = "auto"
    """``auto``, ``bfloat16``, ``float16`` or ``float32``."""
    device_map: str | dict[str, Any] | None = None
    """Spread one model over several GPUs (``auto``); overrides ``device``."""
    trust_remote_code: bool = False
    """Needed for models whose code ships with the checkpoint (MiniCPM-V / MiniCPM-o)."""
    generation: GenerationConfig = GenerationConfig()
    workers: int | None = Field(default=None, ge=1)
    """Requests run at once; default: the engine's own (one per core for the embedded CPU
    models, 1 for transformers, 64 for vLLM, which batches)."""
    max_queue: int = Field(default=32, ge=0)
    """Requests that may wait for a worker; the next is refused (``model_overloaded``)."""
    stuck_after_s: float = Field(default=300.0, gt=0)
    """A request running longer than this makes the model unhealthy (``/healthz`` 503)."""
    handlers: list[str] = []
    """Handlers that use this model; they form a profile named after the model."""
    memory: MemoryConfig = MemoryConfig()
    """The budget of each session's timeline of this model (``describe``, ``video``,
    ``listen`` and questions render from it unless a session turns ``memory`` off)."""
    session_affinity: bool | None = None
    """On Ray Serve: a session's calls go to the replica that served it before (its prefix
    cache is there), and elsewhere only when that one is gone or full. ``None``: on for the
    vLLM engine with prefix caching and the transformers engine with its session cache (both
    by default), off for the others."""

    def sticky(self) -> bool:
        """Whether a session's calls should stick to one replica (``session_affinity``)."""
        if self.session_affinity is not None:
            return self.session_affinity
        if self.engine == "transformers":
            return bool(self.options.get("session_cache_mb", 1))
        return self.engine == "vllm" and bool(self.options.get("enable_prefix_caching", True))
    options: dict[str, Any] = {}


class GatingConfig(_Config):
    """Scene-change gating: skip a window whose frame shows what the handler last acted on."""

    enabled: bool | None = None
    """``None``: the handler's own default (on for the built-in image handlers)."""
    pixel_delta: int = Field(default=16, ge=1, le=255)
    """Grey levels a pixel of the 160x120 grey thumbnail must change by to count as changed."""
    min_pixels: int = Field(default=3, ge=1)
    """Changed thumbnail pixels that make a new scene."""


class HandlerConfig(_Config):
    model: str | None = None
    options: dict[str, Any] = {}
    gating: GatingConfig = GatingConfig()


class VoiceConfig(_Config):
    """A voice from a file (``voices.NAME``): a voice engine a plugin registers reads it."""

    engine: str
    """The voice engine: ``piper`` (``pip install 'streamagent[piper]'``), or ``model``: a
    model of this config that speaks itself (an omni checkpoint, docs/config.md)."""
    model: str
    """The voice file (piper: a ``.onnx`` voice with its ``.onnx.json`` beside it); for
    engine ``model``, the model's name."""
    description: str = ""
    options: dict[str, Any] = {}
    """The engine's own (piper: ``speaker``, ``length_scale``, ``noise_scale``, ...)."""


class ProfileConfig(_Config):
    """What ``?model=NAME`` selects: which handlers run and the session defaults."""

    handlers: list[str] | None = None
    """Handler names; ``None`` means every handler that is on by default."""
    models: dict[str, str] = {}
    """Per-handler model for this profile (handler name -> model name)."""
    live: bool = False
    sample_fps: float = Field(default=1.0, gt=0, le=30)
    video_window_s: float = Field(default=8.0, gt=0)
    instructions: str = ""


class Config(_Config):
    server: ServerConfig = ServerConfig()
    models: dict[str, ModelConfig] = {}
    handlers: dict[str, HandlerConfig] = {}
    profiles: dict[str, ProfileConfig] = {"default": ProfileConfig()}
    voices: dict[str, VoiceConfig] = {}
    """Voices read from files, beside those the plugins register (docs/config.md)."""


def load_config(path: str | Path | None, **server_overrides: Any) -> Config:
    """Read a YAML config (or the defaults) and apply CLI overrides to ``server``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
    overrides = {k: v for k, v in server_overrides.items() if v is not None}
    if overrides:
        data["server"] = {**(data.get("server") or {}), **overrides}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid config {path or '(defaults)'}:\n" + "\n".join(lines)) from None
