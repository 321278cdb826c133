"""``streamagent ask FILE... QUESTION``: one answer about files, with no server, as a person
types it: the embedded models on a picture, a recording and a video with its sound; a tiny
real checkpoint with ``--source``; a clear error for what it cannot read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.testing import jpeg_bytes
from agent.tiny import build
from tests.media import flite_wav, read_wav, word_video

CLI = [sys.executable, "-m", "agent.cli", "ask"]
SENTENCE = "hello world. this is a test of speech recognition"
KEYWORDS = {"hello", "world", "test", "speech", "recognition"}


def heard(answer: str) -> bool:
    """pocketsphinx hears flite's voice at about 95% of words: most keywords, not all."""
    return len(KEYWORDS & set(answer.lower().replace('"', " ").split())) >= 3


def ask(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_picture_and_a_recording_with_the_embedded_models(tmp_path: Path) -> None:
    picture = tmp_path / "sign.jpg"
    picture.write_bytes(jpeg_bytes("EXIT 12", size=(480, 200)))
    talk = flite_wav(tmp_path / "talk.wav", SENTENCE)
    out = ask(str(picture), str(talk), "what is written and what is said?")
    assert out.returncode == 0, out.stderr
    assert "EXIT 12" in out.stdout and heard(out.stdout), out.stdout


@pytest.mark.slow
def test_a_video_gives_its_frames_and_its_sound(tmp_path: Path) -> None:
    speech, rate = read_wav(flite_wav(tmp_path / "s.wav", SENTENCE))
    clip = word_video(tmp_path / "clip.mp4", ["STOP"] * 5, speech=speech, audio_rate=rate)
    out = ask(str(clip), "what happens?")
    assert out.returncode == 0, out.stderr
    assert "STOP" in out.stdout and heard(out.stdout), out.stdout


@pytest.mark.slow
def test_source_runs_a_tiny_checkpoint(tmp_path: Path) -> None:
    source = build("qwen2-vl", tmp_path / "qwen2-vl")
    picture = tmp_path / "p.jpg"
    picture.write_bytes(jpeg_bytes("hi"))
    out = ask("--source", str(source), "--max-tokens", "6", str(picture), "what is this?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "a random-weight model still writes words"
    assert "Traceback" not in out.stderr


def test_what_it_cannot_read_is_one_clear_line(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not media")
    out = ask(str(notes), "what?", timeout=60)
    assert out.returncode == 1
    assert "notes.txt" in out.stderr and "neither a picture" in out.stderr
    assert "Traceback" not in out.stderr
    out = ask("what?", str(notes), timeout=60)  # the question last
    assert out.returncode == 2 and "the question comes last" in out.stderr
