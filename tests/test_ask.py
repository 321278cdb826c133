"""``streamagent ask FILE... QUESTION``: one answer about files, with no server, as a person
types it (its click command, in this process; test_install runs the installed command): the
embedded models on a picture, a recording and a video with its sound; a tiny real checkpoint
with ``--source``; a clear error for what it cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agent.cli import main
from agent.testing import jpeg_bytes
from agent.tiny import build
from tests.media import flite_wav, read_wav, word_video

SENTENCE = "hello world. this is a test of speech recognition"
KEYWORDS = {"hello", "world", "test", "speech", "recognition"}


def heard(answer: str) -> bool:
    """pocketsphinx hears flite's voice at about 95% of words: most keywords, not all."""
    return len(KEYWORDS & set(answer.lower().replace('"', " ").split())) >= 3


def ask(*args: str) -> Result:
    """The command's result (the tests take the root_logging fixture: the command sets
    logging up)."""
    return CliRunner().invoke(main, ["ask", *args])


@pytest.mark.slow
def test_a_picture_and_a_recording_with_the_embedded_models(tmp_path: Path,
                                                            root_logging: None) -> None:
    picture = tmp_path / "sign.jpg"
    picture.write_bytes(jpeg_bytes("EXIT 12", size=(480, 200)))
    talk = flite_wav(tmp_path / "talk.wav", SENTENCE)
    out = ask(str(picture), str(talk), "what is written and what is said?")
    assert out.exit_code == 0, out.stderr
    assert "EXIT 12" in out.stdout and heard(out.stdout), out.stdout


@pytest.mark.slow
def test_a_video_gives_its_frames_and_its_sound(tmp_path: Path, root_logging: None) -> None:
    speech, rate = read_wav(flite_wav(tmp_path / "s.wav", SENTENCE))
    clip = word_video(tmp_path / "clip.mp4", ["STOP"] * 5, speech=speech, audio_rate=rate)
    out = ask(str(clip), "what happens?")
    assert out.exit_code == 0, out.stderr
    assert "STOP" in out.stdout and heard(out.stdout), out.stdout


@pytest.mark.slow
def test_source_runs_a_tiny_checkpoint(tmp_path: Path, root_logging: None) -> None:
    source = build("qwen2-vl", tmp_path / "qwen2-vl")
    picture = tmp_path / "p.jpg"
    picture.write_bytes(jpeg_bytes("hi"))
    out = ask("--source", str(source), "--max-tokens", "6", str(picture), "what is this?")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.strip(), "a random-weight model still writes words"
    assert "Traceback" not in out.stderr


def test_what_it_cannot_read_is_one_clear_line(tmp_path: Path, root_logging: None) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not media")
    out = ask(str(notes), "what?")
    assert out.exit_code == 1
    assert "notes.txt" in out.stderr and "neither a picture" in out.stderr
    assert "Traceback" not in out.stderr
    out = ask("what?", str(notes))  # the question last
    assert out.exit_code == 2 and "the question comes last" in out.stderr
