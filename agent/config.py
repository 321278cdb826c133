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
    tls_certfile: str | None = None
    """Serve https/wss with this certificate (PEM); browsers allow cameras only on secure
    origins, so this is how a phone on the network reaches the camera page."""
    tls_keyfile: str | None = None
    ping_interval_s: float = Field(default=20.0, gt=0)
    shutdown_timeout_s: float = Field(default=5.0, ge=0)


class ModelConfig(_Config):
    engine: str
    """The engine kind that runs it (``rapidocr``, ``transformers``, ``vllm``, ...)."""
    source: str | None = None
    """A local directory or a hub id, for engines that load checkpoints."""
    device: str = "cpu"
    options: dict[str, Any] = {}


class HandlerConfig(_Config):
    model: str | None = None
    options: dict[str, Any] = {}


class ProfileConfig(_Config):
    """What ``?model=NAME`` selects: which handlers run and the session defaults."""

    handlers: list[str] | None = None
    """Handler names; ``None`` means every handler that is on by default."""
    live: bool = False
    sample_fps: float = Field(default=1.0, gt=0, le=30)
    video_window_s: float = Field(default=8.0, gt=0)
    instructions: str = ""


class Config(_Config):
    server: ServerConfig = ServerConfig()
    models: dict[str, ModelConfig] = {}
    handlers: dict[str, HandlerConfig] = {}
    profiles: dict[str, ProfileConfig] = {"default": ProfileConfig()}


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
