"""The end of a turn from how the user sounded: does this pause end what they were saying?

Smart Turn v3.2 (Daily's pipecat-ai, BSD 2-Clause): a Whisper-encoder classifier that hears the
last 8 s of an utterance and gives the probability that the speaker has finished. The model
ships inside this package (``agent/data/smart_turn_v3_2.onnx``, copied unchanged from the
``pipecat-ai`` 1.14.0 wheel's ``smart-turn-v3.2-cpu.onnx``, with its licence beside it), run
through onnxruntime on one thread: about 45 ms a call on one core of this project's 2-core test
machine (docs/performance.md). ``semantic_vad`` asks it once per pause (``PAUSE_S`` of
silence after speech); a pause it calls unfinished waits on, up to the eagerness's limit.

The features are Whisper's log-mel spectrogram (80 mels, 8 s), as
``transformers.WhisperFeatureExtractor`` computes them, in numpy: the math follows pipecat's
``_whisper_features.py`` (BSD 2-Clause, Daily; portions Apache-2.0, The HuggingFace Inc. team).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.media import AUDIO_RATE, Audio
from agent.vad import packaged_model

MODEL_S = 8
"""Seconds of audio the model hears: the end of the utterance, zero-padded in front."""
PAUSE_S = 0.2
"""Silence after speech at which the model is asked whether the turn is over."""
FINISHED = 0.5
"""The probability at or above which a pause ends the turn."""
_N_FFT, _HOP, _MELS = 400, 160, 80


def _mel_filters() -> np.ndarray:
    """Slaney-scale, Slaney-normalized triangular filters, ``(N_FFT // 2 + 1, MELS)``."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        return np.where(hz >= 1000, 15 + np.log(np.maximum(hz, 1e-9) / 1000) * 27 / np.log(6.4),
                        3 * hz / 200)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(mel >= 15, 1000 * np.exp((mel - 15) * np.log(6.4) / 27), 200 * mel / 3)

    edges = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(AUDIO_RATE / 2)),
                              _MELS + 2))
    slopes = edges[None, :] - np.linspace(0, AUDIO_RATE // 2, _N_FFT // 2 + 1)[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    filters: np.ndarray = np.maximum(0, np.minimum(down, up))
    filters *= (2 / (edges[2:] - edges[:-2]))[None, :]
    return filters


_FILTERS = _mel_filters()
_WINDOW = np.hanning(_N_FFT + 1)[:-1]  # periodic Hann, as torch.hann_window


def features(audio: Audio) -> np.ndarray:
    """Whisper's normalized log-mel features of exactly ``MODEL_S`` s of 16 kHz audio,
    ``(80, 800)`` float32."""
    x = audio.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), _N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2
    log = np.log10(np.maximum(1e-10, _FILTERS.T @ power.T))[:, :-1]
    log = np.maximum(log, log.max() - 8.0)
    out: np.ndarray = ((log + 4.0) / 4.0).astype(np.float32)
    return out


def _session() -> Any:
    return packaged_model("smart_turn_v3_2.onnx")


def load_turn_model() -> None:
    """Load the model now (every session shares it), e.g. off the event loop."""
    _session()


def finished(utterance: Audio) -> float:
    """The probability that the speaker has finished, from the end of ``utterance`` (16 kHz,
    ending in the pause in question)."""
    n = MODEL_S * AUDIO_RATE
    tail = utterance[-n:]
    window = np.concatenate([np.zeros(n - tail.size, np.float32), tail]) if tail.size < n else tail
    out = _session().run(None, {"input_features": features(window)[None]})
    return float(np.asarray(out[0]).reshape(-1)[0])


def turn_over(utterance: Audio) -> bool:
    """Whether the speaker has finished (``finished`` at or above ``FINISHED``)."""
    return finished(utterance) >= FINISHED
