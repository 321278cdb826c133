"""Voice activity with silero-vad's ONNX model, through onnxruntime alone (no torch).

The model ships inside this package (``agent/data/silero_vad.onnx``, MIT, copied unchanged
from silero-vad 6.2.3's wheel, with its licence beside it): the ``silero-vad`` distribution
declares torch as a dependency, which would make the embedded default a torch install.

``Segmenter`` turns a stream of 16 kHz audio into utterances: speech starts when the speech
probability crosses ``threshold`` and ends after ``min_silence_s`` below it. Part of the plugin
API: handlers use ``agent.Segmenter``, ``agent.Utterance`` and ``agent.load_vad``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from agent.media import AUDIO_RATE, Audio

CHUNK = 512  # samples per VAD step at 16 kHz (32 ms)
CONTEXT = 64


@functools.cache
def _session() -> Any:
    import onnxruntime as ort

    model = resources.files("agent").joinpath("data", "silero_vad.onnx").read_bytes()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def load_vad() -> None:
    """Load the VAD model now (segmenters share it), e.g. off the event loop at start-up."""
    _session()


class SileroVAD:
    """Speech probability per 32 ms chunk; keeps its recurrent state between calls."""

    def __init__(self) -> None:
        self.session = _session()
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros((1, CONTEXT), np.float32)

    def __call__(self, chunk: Audio) -> float:
        x = np.concatenate([self.context, chunk.reshape(1, CHUNK)], axis=1)
        out, self.state = self.session.run(
            None, {"input": x, "state": self.state, "sr": np.array(AUDIO_RATE, np.int64)}
        )
        self.context = x[:, -CONTEXT:]
        return float(out[0][0])


@dataclass(frozen=True, slots=True)
class Utterance:
    """One stretch of speech: media time of its first and past its last sample, 16 kHz audio."""

    start: float
    end: float
    audio: Audio


class Segmenter:
    """One audio stream's voice activity (one per handler instance: it keeps the VAD's state)."""

    def __init__(self, threshold: float = 0.5, min_silence_s: float = 0.5,
                 pre_roll_s: float = 0.2, max_utterance_s: float = 20.0) -> None:
        self.vad = SileroVAD()
        self.threshold = threshold
        self.min_silence = int(min_silence_s * AUDIO_RATE / CHUNK)
        self.pre_roll = int(pre_roll_s * AUDIO_RATE / CHUNK)
        self.max_chunks = int(max_utterance_s * AUDIO_RATE / CHUNK)
        self._rest = np.zeros(0, np.float32)
        self._t = 0.0  # media time of the first sample in _rest
        self._recent: list[Audio] = []  # pre-roll while silent
        self._speech: list[Audio] = []
        self._start = 0.0
        self._silent = 0

    def reset(self) -> None:
        """Forget all buffered audio and the VAD's state (``input_audio_buffer.clear``)."""
        self.vad.reset()
        self._rest = np.zeros(0, np.float32)
        self._recent, self._speech, self._silent = [], [], 0

    def feed(self, audio: Audio, t: float, final: bool = False) -> list[Utterance]:
        """Add audio whose first sample is at media time ``t``; return finished utterances."""
        if not self._rest.size:
            self._t = t
        buf = np.concatenate([self._rest, audio]) if self._rest.size else audio
        done = []
        n = buf.size // CHUNK
        for i in range(n):
            chunk = buf[i * CHUNK:(i + 1) * CHUNK]
            t_chunk = self._t + i * CHUNK / AUDIO_RATE
            utt = self._step(chunk, t_chunk)
            if utt is not None:
                done.append(utt)
        self._rest = buf[n * CHUNK:].copy()
        self._t += n * CHUNK / AUDIO_RATE
        if final and self._speech:
            done.append(self._end(self._t))
        return done

    def _step(self, chunk: Audio, t: float) -> Utterance | None:
        speech = self.vad(chunk) >= self.threshold
        if not self._speech:
            self._recent = [*self._recent[-self.pre_roll:], chunk] if self.pre_roll else []
            if speech:
                self._speech = list(self._recent) or [chunk]
                self._start = t - (len(self._speech) - 1) * CHUNK / AUDIO_RATE
                self._recent, self._silent = [], 0
            return None
        self._speech.append(chunk)
        self._silent = 0 if speech else self._silent + 1
        if self._silent >= self.min_silence or len(self._speech) >= self.max_chunks:
            return self._end(t + CHUNK / AUDIO_RATE)
        return None

    def _end(self, t: float) -> Utterance:
        utt = Utterance(self._start, t, np.concatenate(self._speech))
        self._speech, self._silent = [], 0
        return utt
