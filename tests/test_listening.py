"""Listening costs less: one VAD pass per session however many segmenters listen, and the
recognizer hears each utterance once, without the silence that ended it (real silero-vad,
real pocketsphinx, real flite speech)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest
import soxr

from agent.config import ModelConfig
from agent.engine import ModelRequest
from agent.handler import HandlerContext
from agent.media import AUDIO_RATE, Window
from agent.parts import Part, TextDelta
from agent.pool import LocalPool
from agent.vad import CHUNK, TAIL_S, Segmenter, voice_track
from plugins.speech import PocketSphinxEngine, SpeechHandler
from tests.media import flite_wav, read_wav


class CountingRecognizer(PocketSphinxEngine):
    """The real recognizer, remembering the audio of every request."""

    def __init__(self, name: str, config: ModelConfig) -> None:
        super().__init__(name, config)
        self.heard: list[np.ndarray] = []

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Part, None]:
        assert request.audio is not None
        self.heard.append(request.audio)
        async for part in super().stream(request):
            yield part


@pytest.fixture(scope="module")
def said(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """1 s of silence, flite saying a sentence, 2 s of silence, twice; 16 kHz."""
    tmp: Path = tmp_path_factory.mktemp("said")
    audio, rate = read_wav(flite_wav(tmp / "s.wav", "hello world. this is a test"))
    quiet = np.zeros(AUDIO_RATE, np.float32)
    one = np.concatenate([quiet, soxr.resample(audio, rate, AUDIO_RATE), quiet, quiet])
    return np.concatenate([one, one]).astype(np.float32)


def windows(audio: np.ndarray) -> list[Window]:
    out = []
    for i, lo in enumerate(range(0, audio.size, AUDIO_RATE)):
        chunk = audio[lo:lo + AUDIO_RATE]
        out.append(Window(i, float(i), i + chunk.size / AUDIO_RATE, audio=chunk))
    return out


async def test_the_recognizer_hears_each_utterance_once_without_its_silence(
        said: np.ndarray) -> None:
    engine = CountingRecognizer("asr", ModelConfig(engine="pocketsphinx", workers=1))
    pool = LocalPool({"asr": engine})
    await pool.start()
    try:
        handler = SpeechHandler(HandlerContext(pool, "asr", {}, session_id="hear-once"))
        utterances = [u for w in windows(said)
                      if (u := handler.hear([(w.audio, w.start)])) is not None]
        heard = []
        for utt in utterances:
            heard.append("".join([w async for w in handler.transcribe(utt)]))
    finally:
        await pool.close()
    assert len(utterances) == 2 and len(engine.heard) == 2
    waited = int(0.5 * AUDIO_RATE / CHUNK) * CHUNK  # the silence that ends an utterance
    for utt, audio in zip(utterances, engine.heard, strict=True):
        assert utt.silence >= waited
        assert np.array_equal(audio, utt.voiced)
        assert audio.size == utt.audio.size - utt.silence + int(TAIL_S * AUDIO_RATE)
    for text in heard:  # behaviour kept: the words are still heard
        assert {"hello", "world", "test"} & set(text.lower().split())


def test_segmenters_of_one_session_share_one_vad_pass(said: np.ndarray) -> None:
    """The speech handler's and turn detection's segmenters (other settings) run the model
    once per chunk together, and each finds what it finds alone."""
    settings = [{}, {"threshold": 0.6, "min_silence_s": 0.3, "pre_roll_s": 0.3}]
    alone = [Segmenter(**s) for s in settings]  # type: ignore[arg-type]
    shared = [Segmenter(stream="one-pass", **s) for s in settings]  # type: ignore[arg-type]
    found: list[list[tuple[float, float]]] = [[], [], [], []]
    for w in windows(said):
        for i, seg in enumerate([*alone, *shared]):
            found[i] += [(u.start, u.end) for u in seg.feed(w.audio, w.start)]
    assert found[0] and found[1] and found[0] != found[1]
    assert found[2:] == found[:2]
    assert voice_track("one-pass").chunks == said.size // CHUNK == alone[0].track.chunks


def test_a_clear_resets_the_shared_vad_once(said: np.ndarray) -> None:
    a, b = Segmenter(stream="cleared"), Segmenter(stream="cleared")
    track = a.track
    first, second = windows(said)[:2]
    a.feed(first.audio, first.start)
    a.reset()
    a.feed(second.audio, second.start)
    state = track.vad.state.copy()
    b.feed(first.audio, first.start)
    b.reset()  # the same clear, later: the model's state is not cleared again
    b.feed(second.audio, second.start)
    assert np.array_equal(track.vad.state, state) and track.generation == 1
    assert track.chunks == (first.audio.size + second.audio.size) // CHUNK


def test_a_window_the_others_let_go_is_still_heard(said: np.ndarray) -> None:
    ahead, behind = Segmenter(stream="late"), Segmenter(stream="late")
    ws = windows(said)
    for w in ws[:1] + ws[2:5]:  # it let window 1 go
        ahead.feed(w.audio, w.start)
    got = [u for w in ws[:5] for u in behind.feed(w.audio, w.start)]
    solo = Segmenter()
    want = [u for w in ws[:5] for u in solo.feed(w.audio, w.start)]
    assert len(got) == len(want) == 1  # heard on its own (a fresh VAD): the same speech
    assert abs(got[0].start - want[0].start) < 0.1 and abs(got[0].end - want[0].end) < 0.1


async def test_the_fast_search_narrows_the_word_beam_and_still_hears(said: np.ndarray) -> None:
    """``options.search: fast`` reaches the worker process's decoder (a word beam of 1e-20
    instead of pocketsphinx's 7e-29), and ``options.nice`` its priority; the sentence is
    still heard."""
    import plugins.speech as speech

    engine = PocketSphinxEngine("asr", ModelConfig(engine="pocketsphinx", workers=1,
                                                   options={"search": "fast", "nice": 7}))
    await engine.start()
    try:
        beam = await asyncio.get_running_loop().run_in_executor(
            engine._pool, speech._decoder_setting, "wbeam")
        nice = await asyncio.get_running_loop().run_in_executor(engine._pool, os.nice, 0)
        text = "".join([p.text async for p in engine.stream(ModelRequest(audio=said[:80000]))
                        if isinstance(p, TextDelta)])
    finally:
        await engine.close()
    assert beam == pytest.approx(1e-20)
    assert nice == os.nice(0) + 7  # the worker runs below the server
    assert {"hello", "world", "test"} & set(text.lower().split())


WORKERS_SCRIPT = """
import asyncio
from agent.config import ModelConfig
from plugins.speech import PocketSphinxEngine

async def main():
    engine = PocketSphinxEngine("asr", ModelConfig(engine="pocketsphinx", workers=2))
    await engine.start()
    print(*engine._pool._processes, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_recognizers_workers_end_with_their_server() -> None:
    """A server killed outright (SIGKILL, a crash) leaves no recognizer process behind."""
    server = subprocess.Popen([sys.executable, "-c", WORKERS_SCRIPT], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).parents[1])
    assert server.stdout is not None
    workers = [int(pid) for pid in server.stdout.readline().split()]
    assert len(workers) == 2 and all(map(_running, workers))
    server.kill()
    server.wait()
    server.stdout.close()
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, workers))
