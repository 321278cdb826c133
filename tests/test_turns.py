"""The end-of-turn model behind ``semantic_vad`` (Smart Turn v3.2, shipped in the package): its
features are Whisper's, and a pause ends a finished sentence at once but waits out an
unfinished one, where silence alone (server VAD) would end both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr

from agent import turns
from agent.media import AUDIO_RATE
from agent.vad import Segmenter
from tests.media import flite_wav, read_wav

FINISHED = "open the door please."
UNFINISHED = "so I was thinking that maybe we could"


def test_features_are_whispers() -> None:
    from transformers import WhisperFeatureExtractor

    audio = np.random.default_rng(0).standard_normal(turns.MODEL_S * AUDIO_RATE) * 0.1
    audio[:50_000] = 0  # the padding in front of a short utterance
    theirs = WhisperFeatureExtractor(chunk_length=turns.MODEL_S)(
        audio.astype(np.float32), sampling_rate=AUDIO_RATE, padding="max_length",
        max_length=audio.size, do_normalize=True, return_tensors="np").input_features[0]
    assert np.abs(turns.features(audio.astype(np.float32)) - theirs).max() < 1e-4


def said(tmp_path: Path, text: str, silence_s: float) -> tuple[np.ndarray, float]:
    """``text`` (flite's 16 kHz ``kal16``), then ``silence_s`` of silence; and where the
    speech ends (s)."""
    audio, rate = read_wav(flite_wav(tmp_path / "said.wav", text, voice="kal16"))
    speech = np.trim_zeros(soxr.resample(audio, rate, AUDIO_RATE), "b").astype(np.float32)
    quiet = np.zeros(AUDIO_RATE // 2, np.float32)
    audio = np.concatenate([quiet, speech, np.zeros(int(silence_s * AUDIO_RATE), np.float32)])
    return audio, (quiet.size + speech.size) / AUDIO_RATE


def ends(audio: np.ndarray, segmenter: Segmenter) -> list[float]:
    """Where each utterance ends, fed as live audio in 1 s windows."""
    return [u.end for lo in range(0, audio.size, AUDIO_RATE)
            for u in segmenter.feed(audio[lo:lo + AUDIO_RATE], lo / AUDIO_RATE)]


def test_a_pause_ends_a_finished_turn_and_waits_out_an_unfinished_one(tmp_path: Path) -> None:
    audio, spoken = said(tmp_path, FINISHED, silence_s=3)
    assert turns.finished(audio[:int((spoken + turns.PAUSE_S) * AUDIO_RATE)]) > 0.9
    [end] = ends(audio, Segmenter(min_silence_s=2.0, turn_over=turns.turn_over))
    assert end - spoken < turns.PAUSE_S + 0.15  # the pause, and the VAD's own lag

    audio, spoken = said(tmp_path, UNFINISHED, silence_s=3)
    assert turns.finished(audio[:int((spoken + turns.PAUSE_S) * AUDIO_RATE)]) < 0.1
    [end] = ends(audio, Segmenter(min_silence_s=2.0, turn_over=turns.turn_over))
    assert end - spoken > 1.5  # waited out (about) the longest pause, 2 s
    [end] = ends(audio, Segmenter(min_silence_s=0.5))  # silence alone ends it early
    assert end - spoken < 0.7
