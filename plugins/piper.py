"""Neural voices from Piper voice files (``.onnx`` with its ``.onnx.json``), by piper-tts.

piper-tts and the espeak-ng it phonemizes with are GPL-3, so they are an optional extra:
``pip install 'streamagent[piper]'``. A voice is a file a user has (Piper's voices are on the
Hugging Face hub as ``rhasspy/piper-voices``); the config names it::

    voices:
      amy:
        engine: piper
        model: /voices/en_US-amy-medium.onnx   # en_US-amy-medium.onnx.json beside it
        options: {speaker: null, length_scale: null}

The voice loads when the server starts (a missing file or extra is a config error then), and
synthesizes on the CPU with onnxruntime (``InferenceSession.run`` is thread-safe, so sessions
share it). A request's ``speed`` divides the voice's own ``length_scale``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from agent import (
    AudioChunk,
    ConfigError,
    EngineError,
    Options,
    Voice,
    VoiceConfig,
    check_options,
    hookimpl,
)


class PiperOptions(Options):
    speaker: int | None = Field(default=None, ge=0)
    """A multi-speaker voice's speaker (``None``: its first)."""
    length_scale: float | None = Field(default=None, gt=0)
    """Phoneme length (``None``: the voice's own; above 1 is slower)."""
    noise_scale: float | None = Field(default=None, ge=0)
    noise_w_scale: float | None = Field(default=None, ge=0)


class PiperVoice(Voice):
    """A Piper voice file, loaded once."""

    def __init__(self, name: str, config: VoiceConfig) -> None:
        check_options(PiperOptions, config.options, f"voices.{name}.options")
        self.name = name
        self.options = PiperOptions.of(config.options)
        model = Path(config.model).expanduser()
        self.description = config.description or f"Piper voice {model.stem}"
        if not model.is_file():
            raise ConfigError(f"voices.{name}.model: no voice file at {model}")
        if not Path(f"{model}.json").is_file():
            raise ConfigError(f"voices.{name}.model: {model}.json, the voice's config, "
                              "is missing (Piper voices come as the two files)")
        try:
            import piper
        except ImportError:
            raise ConfigError(f"voices.{name}: piper-tts is not installed: pip install "
                              "'streamagent[piper]'") from None
        try:
            self.voice = piper.PiperVoice.load(model)
        except Exception as exc:  # onnxruntime's or the JSON's complaint, whichever
            raise ConfigError(f"voices.{name}: cannot load {model}: {exc}") from None
        self.rate = int(self.voice.config.sample_rate)

    def synthesize(self, text: str, speed: float = 1.0) -> AudioChunk:
        if not text.strip():
            return AudioChunk(b"", self.rate, text)
        from piper import SynthesisConfig

        opts = self.options
        length = opts.length_scale or self.voice.config.length_scale
        settings = SynthesisConfig(speaker_id=opts.speaker, length_scale=length / speed,
                                   noise_scale=opts.noise_scale,
                                   noise_w_scale=opts.noise_w_scale)
        try:
            pcm = b"".join(chunk.audio_int16_bytes
                           for chunk in self.voice.synthesize(text, settings))
        except Exception as exc:
            raise EngineError(f"voice {self.name!r} (piper) failed: {exc}") from None
        return AudioChunk(pcm, self.rate, text)


@hookimpl
def register_voice_engines(register: Any) -> None:
    register("piper", PiperVoice)
