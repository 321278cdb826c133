"""Voice activity with silero-vad's ONNX model, through onnxruntime alone (no torch).

The model ships inside this package (``agent/data/silero_vad.onnx``, MIT, copied unchanged
from silero-vad 6.2.3's wheel, with its licence beside it): the ``silero-vad`` distribution
declares torch as a dependency, which would make the embedded default a torch install.

``Segmenter`` turns a stream of 16 kHz audio into utterances: speech starts when the speech
probability crosses ``threshold`` and ends after ``min_silence_s`` below it. Part of the plugin
API: handlers use ``agent.Segmenter``, ``agent.Utterance`` and ``agent.load_vad``.

A session's audio is heard once: the segmenters of one stream (``stream=`` a session id: the
speech handler's, the transcriber's turn detection) share one ``VoiceTrack``, which runs the
model once per 32 ms of the stream, whichever segmenter brings that audio first; each applies
its own threshold and silences to the same probabilities.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from agent.media import AUDIO_RATE, Audio

CHUNK = 512  # samples per VAD step at 16 kHz (32 ms)
CONTEXT = 64
TAIL_S = 0.3
"""Trailing silence an utterance keeps for the recognizer (``Utterance.voiced``): enough for
the last word's end (0.15 s lost words on flite's 8 kHz voice and on human recordings), not
the whole wait that ended the utterance."""
MODEL_CHUNKS = 8 * AUDIO_RATE // CHUNK
"""The end of an utterance an end-of-turn model hears (8 s)."""
HISTORY = 4096
"""Chunks (131 s) and windows a track remembers for segmenters that bring the same audio later."""


@functools.cache
def packaged_model(name: str) -> Any:
    """An onnxruntime session on one thread for ``name``, a model shipped in ``agent/data``
    (loaded once, shared by every session)."""
    import onnxruntime as ort

    model = resources.files("agent").joinpath("data", name).read_bytes()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _session() -> Any:
    return packaged_model("silero_vad.onnx")


def load_vad() -> None:
    """Load the VAD model now (segmenters share it), e.g. off the event loop at start-up."""
    _session()


class SileroVAD:
    """Speech probability per 32 ms chunk; keeps its recurrent state between calls."""

    def __init__(self) -> None:
        self.session = _session()
        self._sr = np.array(AUDIO_RATE, np.int64)
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros((1, CONTEXT), np.float32)

    def __call__(self, chunk: Audio) -> float:
        x = np.concatenate([self.context, chunk.reshape(1, CHUNK)], axis=1)
        out, self.state = self.session.run(
            None, {"input": x, "state": self.state, "sr": self._sr})
        self.context = x[:, -CONTEXT:]
        return float(out[0][0])


class VoiceTrack:
    """One audio stream's speech probabilities, computed once for all its segmenters.

    The stream is the audio in the order it first arrives (as one segmenter alone hears it);
    chunk ``k`` is its samples ``[k * CHUNK, (k + 1) * CHUNK)``. Thread-safe: segmenters feed
    it from their own threads.
    """

    def __init__(self) -> None:
        self.vad = SileroVAD()
        self.generation = 0
        """How many times the stream was cleared (segmenters reset it once per clear)."""
        self.chunks = 0
        """Chunks the model has run on (all segmenters together)."""
        self._lock = threading.Lock()
        self._length = 0  # samples in the stream
        self._last_t = float("-inf")  # media time of the newest audio placed
        self._tail = np.zeros(0, np.float32)  # samples past the last whole chunk
        self._probs: deque[float] = deque(maxlen=HISTORY)  # of chunks [_first, _length // CHUNK)
        self._first = 0
        self._placed: OrderedDict[tuple[int, int, float], int] = OrderedDict()

    def place(self, audio: Audio, t: float) -> int | None:
        """Where ``audio`` (its first sample at media time ``t``) starts in the stream: new
        audio is appended and heard now. ``None``: older than the stream's newest audio and
        not placed before (a segmenter brought a window the others let go), so not in it."""
        key = (id(audio), audio.size, t)
        with self._lock:
            offset = self._placed.get(key)
            if offset is not None:
                return offset
            if t < self._last_t:
                return None
            offset, self._last_t = self._length, t
            self._placed[key] = offset
            if len(self._placed) > HISTORY:
                self._placed.popitem(last=False)
            self._hear(audio)
            return offset

    def probabilities(self, first: int, stop: int) -> list[float | None]:
        """Speech probability of chunks ``first`` to ``stop - 1`` (``None``: forgotten)."""
        with self._lock:
            return [self._probs[k - self._first] if self._first <= k < self._end() else None
                    for k in range(first, stop)]

    def reset(self, generation: int) -> None:
        """Clear the model's state, once per ``generation`` however many segmenters ask."""
        with self._lock:
            if generation > self.generation:
                self.generation = generation
                self.vad.reset()

    def _end(self) -> int:
        return self._first + len(self._probs)

    def _hear(self, audio: Audio) -> None:
        buf = np.concatenate([self._tail, audio]) if self._tail.size else audio
        n = buf.size // CHUNK
        for i in range(n):
            if len(self._probs) == self._probs.maxlen:
                self._first += 1
            self._probs.append(self.vad(buf[i * CHUNK:(i + 1) * CHUNK]))
        self.chunks += n
        self._tail = buf[n * CHUNK:].copy()
        self._length += audio.size


_tracks: weakref.WeakValueDictionary[str, VoiceTrack] = weakref.WeakValueDictionary()
_tracks_lock = threading.Lock()


def voice_track(stream: str) -> VoiceTrack:
    """The track of audio stream ``stream`` (a session id), shared while a segmenter holds it."""
    with _tracks_lock:
        track = _tracks.get(stream)
        if track is None:
            track = _tracks[stream] = VoiceTrack()
        return track


@dataclass(frozen=True, slots=True)
class Utterance:
    """One stretch of speech: media time of its first and past its last sample, 16 kHz audio."""

    start: float
    end: float
    audio: Audio
    silence: int = 0
    """Samples of silence at the end of ``audio`` (the wait that ended the utterance)."""

    @classmethod
    def joined(cls, done: list[Utterance]) -> Utterance:
        """Utterances that ended together (in one window or one ``hear``) as one, none
        dropped: a handler answers them in one response."""
        if len(done) == 1:
            return done[0]
        return cls(done[0].start, done[-1].end, np.concatenate([u.audio for u in done]),
                   done[-1].silence)

    @property
    def voiced(self) -> Audio:
        """``audio`` less its trailing silence past ``TAIL_S``: what a recognizer needs."""
        cut = max(0, self.silence - int(TAIL_S * AUDIO_RATE))
        return self.audio[:self.audio.size - cut]


class Segmenter:
    """One audio stream's utterances (one per handler instance: it keeps their state).

    ``stream``: the stream's name (a session id); segmenters of one stream share its
    probabilities (``voice_track``). Unnamed, a segmenter hears its audio alone.
    """

    def __init__(self, threshold: float = 0.5, min_silence_s: float = 0.5,
                 pre_roll_s: float = 0.2, max_utterance_s: float = 20.0,
                 stream: str = "", turn_over: Callable[[Audio], bool] | None = None,
                 pause_s: float = 0.2) -> None:
        """``turn_over``: an end-of-turn model (``agent.turns.turn_over``). With it, a pause of
        ``pause_s`` ends the utterance when the model hears it as finished; ``min_silence_s``
        is then the longest pause that does not."""
        self.track = voice_track(stream) if stream else VoiceTrack()
        self.threshold = threshold
        self.turn_over = turn_over
        self.pause = max(1, int(pause_s * AUDIO_RATE / CHUNK))
        self.min_silence = int(min_silence_s * AUDIO_RATE / CHUNK)
        self.pre_roll = int(pre_roll_s * AUDIO_RATE / CHUNK)
        self.max_chunks = int(max_utterance_s * AUDIO_RATE / CHUNK)
        self._generation = self.track.generation
        self._private: VoiceTrack | None = None  # for audio the shared track let go
        self._reset_state()

    def _reset_state(self) -> None:
        self._rest = np.zeros(0, np.float32)
        self._at = 0  # stream offset of _rest's first sample
        self._t = 0.0  # media time of _rest's first sample
        self._recent: list[Audio] = []  # pre-roll while silent
        self._speech: list[Audio] = []
        self._start = 0.0
        self._silent = 0

    @property
    def speaking_since(self) -> float | None:
        """The media time where the utterance now under way began (its pre-roll included),
        or ``None`` between utterances: speech has started, its end is not heard yet."""
        return self._start if self._speech else None

    def reset(self) -> None:
        """Forget all buffered audio and the VAD's state (``input_audio_buffer.clear``)."""
        self._generation += 1
        self.track.reset(self._generation)
        self._private = None
        self._reset_state()

    def feed(self, audio: Audio, t: float, final: bool = False) -> list[Utterance]:
        """Add audio whose first sample is at media time ``t``; return finished utterances."""
        done: list[Utterance] = []
        if audio.size:
            track, at = self.track, self.track.place(audio, t)
            if at is None:  # heard by no other segmenter: this one hears it alone
                self._private = self._private or VoiceTrack()
                track, at = self._private, self._private.place(audio, t)
                assert at is not None
            if at != self._at + self._rest.size or not self._rest.size:
                self._rest, self._at, self._t = audio[:0], at, t  # a new stretch of the stream
            done = self._chunks(track, audio)
        if final and self._speech:
            done.append(self._end(self._t))
        return done

    def hear(self, pieces: list[tuple[Audio, float]]) -> list[Utterance]:
        """``feed`` each piece (samples, media time of the first) in order; the utterances
        they ended."""
        return [u for audio, t in pieces for u in self.feed(audio, t)]

    def finish(self, t: float) -> list[Utterance]:
        """The audio so far is all there is (a commit, the stream's end): the utterance under
        way, if any, ends at media time ``t``."""
        return self.feed(np.zeros(0, np.float32), t, final=True)

    def _chunks(self, track: VoiceTrack, audio: Audio) -> list[Utterance]:
        buf = np.concatenate([self._rest, audio]) if self._rest.size else audio
        skip = -self._at % CHUNK  # a stretch may start mid-chunk: its first part is not heard
        first = (self._at + skip) // CHUNK
        n = max(0, buf.size - skip) // CHUNK
        done = []
        for i, p in enumerate(track.probabilities(first, first + n)):
            lo = skip + i * CHUNK
            utt = self._step(buf[lo:lo + CHUNK], self._t + lo / AUDIO_RATE, p or 0.0)
            if utt is not None:
                done.append(utt)
        used = min(buf.size, skip + n * CHUNK)
        self._rest, self._at = buf[used:].copy(), self._at + used
        self._t += used / AUDIO_RATE
        return done

    def _step(self, chunk: Audio, t: float, p: float) -> Utterance | None:
        speech = p >= self.threshold
        if not self._speech:
            self._recent = [*self._recent[-self.pre_roll:], chunk] if self.pre_roll else []
            if speech:
                self._speech = list(self._recent) or [chunk]
                self._start = t - (len(self._speech) - 1) * CHUNK / AUDIO_RATE
                self._recent, self._silent = [], 0
            return None
        self._speech.append(chunk)
        self._silent = 0 if speech else self._silent + 1
        if (self._silent >= self.min_silence or len(self._speech) >= self.max_chunks
                or self._silent == self.pause and self._turn_over()):
            return self._end(t + CHUNK / AUDIO_RATE)
        return None

    def _turn_over(self) -> bool:
        """Whether the end-of-turn model hears the utterance so far as finished."""
        if self.turn_over is None:
            return False
        return self.turn_over(np.concatenate(self._speech[-MODEL_CHUNKS:]))

    def _end(self, t: float) -> Utterance:
        utt = Utterance(self._start, t, np.concatenate(self._speech), self._silent * CHUNK)
        self._speech, self._silent = [], 0
        return utt
