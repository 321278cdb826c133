"""Client audio to the sampler's format: PCM16 little-endian at any rate -> mono float32 16 kHz."""

from __future__ import annotations

import io
import wave

import numpy as np
import soxr

from agent.errors import InvalidMedia
from agent.media import AUDIO_RATE, Audio, b64decode

SUPPORTED_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def check_rate(rate: int) -> int:
    if rate not in SUPPORTED_RATES:
        raise InvalidMedia(
            f"unsupported audio rate {rate} Hz; use one of {', '.join(map(str, SUPPORTED_RATES))}",
            param="session.audio.input.format.rate",
        )
    return rate


def pcm16_to_float(raw: bytes, channels: int = 1) -> Audio:
    """Interleaved PCM16 bytes -> mono float32 in [-1, 1)."""
    if len(raw) % (2 * channels):
        raise InvalidMedia(
            f"audio is {len(raw)} bytes, not a whole number of {channels}-channel PCM16 samples",
            param="audio",
        )
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples


def float_to_pcm16(audio: Audio) -> bytes:
    """Float samples (clipped to [-1, 1]) -> PCM16 little-endian bytes."""
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class AudioConverter:
    """Streams one session's audio to 16 kHz without clicks at chunk boundaries."""

    def __init__(self, rate: int) -> None:
        self.rate = check_rate(rate)
        self._stream = (
            None if rate == AUDIO_RATE else soxr.ResampleStream(rate, AUDIO_RATE, 1, np.float32)
        )

    def __call__(self, b64: str) -> Audio:
        samples = pcm16_to_float(b64decode(b64, "audio"))
        if self._stream is None:
            return samples
        out: Audio = self._stream.resample_chunk(samples)
        return out


def wav_bytes(pcm16: bytes, rate: int) -> bytes:
    """Mono 16-bit PCM as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
    return out.getvalue()
