from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent.audio import AudioConverter, pcm16_to_float
from agent.errors import InvalidMedia
from agent.handler import Mailbox
from agent.media import Frame
from agent.sampler import Sampler
from agent.testing import data_url, jpeg_bytes


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def frame(ts: float, text: str = "") -> Frame:
    return Frame(data_url(jpeg_bytes(text)).split(",", 1)[1], ts)


def test_newest_frame_of_each_window_wins_and_dropped_frames_are_never_decoded() -> None:
    sampler = Sampler(1.0, clock=Clock())
    frames = [frame(i / 30) for i in range(30 * 3)]  # 3 s at 30 fps
    windows = [w for f in frames for w in sampler.add_frame(f)]
    windows += sampler.flush()
    assert [w.index for w in windows] == [0, 1, 2]
    assert [w.frame for w in windows] == [frames[29], frames[59], frames[89]]
    assert [w.frames_dropped for w in windows] == [29, 29, 29]
    assert not any(f.decoded for f in frames)  # nothing decoded until a handler asks
    assert windows[0].frame is not None and windows[0].frame.image().shape == (240, 320, 3)
    assert sum(f.decoded for f in frames) == 1
    assert sampler.stats.frames_dropped == 87


def test_windows_follow_sample_fps() -> None:
    sampler = Sampler(0.5, clock=Clock())
    windows = [w for i in range(10) for w in sampler.add_frame(frame(i * 0.25))]
    assert [(w.start, w.end) for w in windows] == [(0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, 2.0)]


def test_late_items_count_in_the_open_window() -> None:
    sampler = Sampler(1.0, clock=Clock())
    sampler.add_frame(frame(2.2))
    assert sampler.add_frame(frame(1.5)) == []  # late: no window goes back in time
    (window,) = sampler.flush()
    assert window.index == 2 and window.frame is not None and window.frame.ts == 1.5


def test_audio_is_cut_at_window_boundaries() -> None:
    sampler = Sampler(1.0, clock=Clock())
    windows = sampler.add_audio(np.ones(24000, np.float32), ts=0.5)  # 1.5 s from 0.5 s
    windows += sampler.flush()
    assert [(w.index, w.audio.size) for w in windows] == [(0, 8000), (1, 16000)]
    assert windows[-1].final


def test_receive_clock_audio_is_contiguous_and_tick_closes_windows() -> None:
    clock = Clock()
    sampler = Sampler(1.0, clock=clock, grace_s=0.1)
    out = []
    for _ in range(25):  # 2.5 s of 100 ms chunks arriving in real time
        clock.t += 0.1
        out += sampler.add_audio(np.zeros(1600, np.float32))
        out += sampler.tick()
    assert [w.index for w in out] == [0, 1]
    assert sum(w.audio.size for w in out) == 2 * 16000  # contiguous from 0.0: no gap, no overlap
    clock.t += 0.55  # the newest audio ended at 2.5 s: window 2 closes at 3.0 + 0.1 grace
    assert sampler.tick() == []
    clock.t += 0.1
    assert [w.index for w in sampler.tick()] == [2]


def test_memory_is_bounded_whatever_the_input() -> None:
    sampler = Sampler(1.0, clock=Clock(), max_audio_s=2.0)
    for _ in range(100):  # all late audio piles into one window
        sampler.add_audio(np.zeros(16000, np.float32), ts=0.0)
    assert sampler._audio_len <= 2 * 16000
    assert sampler.stats.audio_dropped_s > 90


def test_audio_converter_resamples_to_16k_mono() -> None:
    conv = AudioConverter(24000)
    pcm = (np.sin(np.arange(24000) / 10) * 10000).astype("<i2")
    out = np.concatenate([conv(_b64(pcm[i:i + 2400])) for i in range(0, 24000, 2400)])
    assert 16000 - 400 < out.size <= 16000  # the resampler holds back a few ms
    assert out.dtype == np.float32
    assert np.abs(out).max() == pytest.approx(10000 / 32768, rel=0.05)


def test_bad_audio_is_refused() -> None:
    with pytest.raises(InvalidMedia, match="not a whole number"):
        pcm16_to_float(b"\x00\x01\x02")
    with pytest.raises(InvalidMedia, match="unsupported audio rate 12345"):
        AudioConverter(12345)
    with pytest.raises(InvalidMedia, match="base64"):
        AudioConverter(16000)("!!!")


def test_corrupt_frames_fail_when_decoded() -> None:
    truncated = jpeg_bytes("X")[:300]
    with pytest.raises(InvalidMedia, match="corrupt image"):
        Frame(data_url(truncated).split(",", 1)[1], 0).image()
    with pytest.raises(InvalidMedia, match="not a JPEG"):
        Frame(data_url(b"hello world, not a picture").split(",", 1)[1], 0).image()


async def test_mailbox_is_latest_wins_with_a_drop_count() -> None:
    box: Mailbox[int] = Mailbox()
    for i in range(5):
        box.put(i)
    assert await box.get() == 4
    assert box.dropped == 4 and len(box) == 0
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    box.put(7)
    assert await getter == 7


def _b64(pcm: np.ndarray) -> str:
    import base64

    return base64.b64encode(pcm.tobytes()).decode()


def test_seconds_to_close_tells_the_ticker_when_to_wake() -> None:
    clock = Clock()
    sampler = Sampler(1.0, clock=clock, grace_s=0.1)
    assert sampler.seconds_to_close() is None  # nothing open: the ticker sleeps until media
    clock.t += 0.3
    sampler.add_audio(np.zeros(1600, np.float32))  # receive clock: window 0 is open
    assert sampler.seconds_to_close() == pytest.approx(0.8)
    clock.t += 0.81
    assert [w.index for w in sampler.tick()] == [0]
    assert sampler.seconds_to_close() is None
