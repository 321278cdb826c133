"""End to end through the embedded default: real media made here, real CPU models, real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from agent.streamer import Reply, stream_file
from agent.uvicorn_server import Address
from tests.helpers import assert_windows_told
from tests.media import flite_wav, read_wav, word_video

pytestmark = pytest.mark.slow
WORDS = ["APPLE", "BANANA", "CHERRY", "DOLPHIN", "ELEPHANT"]
SENTENCE = "hello world. this is a test of speech recognition"
KEYWORDS = {"hello", "world", "test", "speech", "recognition"}


async def test_a_word_per_second_is_read_in_order_in_its_window(
        embedded: Address, tmp_path: Path) -> None:
    video = word_video(tmp_path / "words.mp4", WORDS)  # H.264 + AAC
    replies, stats = await stream_file(str(video), embedded.realtime, handlers=["text_in_view"],
                                       expect=len(WORDS))
    assert stats.frames == 50 and not stats.errors
    read = [(r.text.strip(), r.start_ms, r.end_ms) for r in replies]
    assert read == [(w, i * 1000, (i + 1) * 1000) for i, w in enumerate(WORDS)]
    assert all(r.handler == "text_in_view" and r.status == "completed" for r in replies)


async def test_speech_is_transcribed_one_response_per_utterance(
        embedded: Address, tmp_path: Path) -> None:
    wav = flite_wav(tmp_path / "speech.wav", SENTENCE)  # 8 kHz: resampled on the way
    # the transcript follows the utterance's end by the decode, which runs at nice 10: on a
    # machine busy with other work, seconds later (docs/performance.md, "Talking sessions")
    replies, stats = await stream_file(str(wav), embedded.realtime, handlers=["speech"],
                                       idle_s=20, expect=1)
    assert stats.audio_s == pytest.approx(read_wav(wav)[0].size / 8000, abs=0.05)
    assert len(replies) == 1, replies
    heard = set(replies[0].text.lower().split())
    assert len(heard & KEYWORDS) >= 3, replies[0].text
    assert replies[0].handler == "speech"
    assert replies[0].start_ms is not None and replies[0].start_ms < 500


@pytest.mark.parametrize("ext", ["webm", "avi"])  # VP8/Opus, MJPEG/PCM
async def test_other_containers(embedded: Address, tmp_path: Path, ext: str) -> None:
    video = word_video(tmp_path / f"words.{ext}", WORDS[:2])
    replies, _ = await stream_file(str(video), embedded.realtime, handlers=["text_in_view"],
                                   expect=2)
    assert [r.text.strip() for r in replies] == WORDS[:2]


async def test_video_with_speech_and_faces_all_handlers(
        embedded: Address, tmp_path: Path) -> None:
    speech, rate = read_wav(flite_wav(tmp_path / "s.wav", SENTENCE))
    speech = np.concatenate([np.zeros(rate // 2, np.float32), speech,
                             np.zeros(rate * 6 - speech.size - rate // 2, np.float32)])
    words = ["HELLO"] * 3 + ["WORLD"] * 3
    video = word_video(tmp_path / "both.mp4", words, speech=speech, audio_rate=rate)
    # the transcript comes by the decode at nice 10: on a busy machine, seconds after the end
    replies, _ = await stream_file(str(video), embedded.realtime, speed=1.0, idle_s=20,
                                   expect=3)
    by = {h: [r for r in replies if r.handler == h] for h in ("text_in_view", "speech")}
    assert [r.text.strip() for r in by["text_in_view"]] == ["HELLO", "WORLD"]
    assert len(by["speech"]) == 1 and "hello" in by["speech"][0].text.lower()
    assert not [r for r in replies if r.handler == "faces"]  # no face: nothing to say


def test_truncated_audio_frames_are_skipped_and_the_rest_streams(
        embedded: Address, tmp_path: Path) -> None:
    video = word_video(tmp_path / "words.mp4", WORDS[:3])
    with av.open(str(video)) as f:
        packets = [(p.pos, p.size) for p in f.demux(audio=0) if p.size and p.pos is not None]
    data = bytearray(video.read_bytes())
    for pos, size in packets[20:25]:
        data[pos:pos + size] = b"\xff" * size
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "stream", str(bad), "--url", embedded.realtime,
         "--handlers", "text_in_view", "--idle", "20", "--expect", "3", "--json"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    replies = [Reply(**json.loads(line)) for line in out.stdout.splitlines()]
    spans = [(0, 1000), (1000, 2000), (2000, 3000)]
    # a handler busy beside the other worker's engines may let the middle window go, and says so
    assert_windows_told(replies, "text_in_view", spans)
    shown = dict(zip(spans, WORDS[:3], strict=True))
    assert [r.text.strip() for r in replies] == [shown[r.start_ms, r.end_ms] for r in replies]
    assert replies[0].line() == "[00:00.000-00:01.000] text_in_view: APPLE"
    assert "skipped 5 bad packets" in out.stderr


async def test_the_example_plugin_runs_through_the_gateway(embedded: Address) -> None:
    from agent.testing import data_url, image_event, jpeg_bytes
    from tests.helpers import Client

    client = await Client.connect(embedded.realtime)
    session = await client.update(live=True, handlers=["colors"])
    assert "colors" in session["streamagent"]["available_handlers"], "run `make test`"
    for i, color in enumerate(["red", "red", "blue"]):
        await client.send(image_event(data_url(jpeg_bytes(color=color)), timestamp=i + 0.1))
    said = []
    for _ in range(2):
        done = (await client.until("response.done"))[-1]["response"]
        said.append((done["metadata"]["handler"], done["output"][0]["content"][0]["text"]))
    assert said == [("colors", "Mostly red."), ("colors", "Mostly blue.")]
    await client.close()


async def test_faces_speak_when_a_face_appears_and_leaves(embedded: Address) -> None:
    from agent.testing import data_url, image_event, jpeg_bytes
    from tests.helpers import Client
    from tests.test_openai_sdk import astronaut_jpeg

    client = await Client.connect(embedded.realtime)
    await client.update(live=True, handlers=["faces"])
    pictures = [jpeg_bytes(), astronaut_jpeg(), astronaut_jpeg(), jpeg_bytes(), jpeg_bytes()]
    for i, picture in enumerate(pictures):
        await client.send(image_event(data_url(picture), timestamp=i + 0.1))
        await asyncio.sleep(0.3)
    said = [(await client.until("response.done"))[-1]["response"] for _ in range(2)]
    assert [(s["metadata"]["window_start_ms"], s["output"][0]["content"][0]["text"])
            for s in said] == [("1000", "1 face in view."), ("3000", "No face in view.")]
    await client.close()


async def test_microphone_audio_on_the_receive_clock_then_a_question(
        embedded: Address, tmp_path: Path) -> None:
    """The OpenAI way: 24 kHz PCM16 chunks with no timestamps, commit, response.create."""
    import base64

    import soxr

    from tests.helpers import Client

    speech, rate = read_wav(flite_wav(tmp_path / "mic.wav", SENTENCE))
    pcm = (soxr.resample(speech, rate, 24000) * 32767).astype("<i2")
    client = await Client.connect(embedded.realtime)
    await client.update(live=False, handlers=["speech", "text_in_view"])
    step = 2400  # 100 ms at 24 kHz, sent in real time
    for i in range(0, pcm.size, step):
        await client.send({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(pcm[i:i + step].tobytes()).decode()})
        await asyncio.sleep(0.1)
    await client.send({"type": "input_audio_buffer.commit"})
    await client.until("input_audio_buffer.committed")
    await client.send({"type": "response.create"})
    got = await client.until("response.done")
    text = "".join(e["delta"] for e in got if e["type"] == "response.output_text.delta")
    assert text.startswith("Last heard:"), text
    assert len(set(text.lower().replace('"', "").split()) & KEYWORDS) >= 3, text
    assert not [e for e in got if e["type"] == "error"]
    await client.close()
