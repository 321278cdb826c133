"""``pip install streamagent`` as a new user runs it: the wheel, built from this tree, installed
with no extras into a fresh virtual environment (packages come from the index, as anyone's
would), serves the embedded default and answers a picture question, and ``streamagent ask``
answers one without a server. Nothing of the test environment is visible to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.testing import data_url, jpeg_bytes
from tests.helpers import endpoint_from

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "ray", "vllm", "silero-vad")


def build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the tree (setuptools writes build/ beside the sources)."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("agent", "plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", str(src), "-w", str(tmp / "dist")], check=True,
                   timeout=120)
    return next((tmp / "dist").glob("streamagent-*.whl"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("install")
    wheel = build_wheel(tmp)
    # no pip of its own: this one installs there (--python), and nothing is byte-compiled ahead
    # (Python compiles what it imports): a third of the time, the same packages installed
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")],
                   check=True, timeout=120)
    pip(tmp / "venv", "install", "-q", "--no-compile", str(wheel), timeout=600)
    return tmp / "venv"


def pip(venv: Path, *args: str, timeout: float = 120) -> str:
    """This interpreter's pip, run on the environment ``venv``."""
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"),
                           *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def clean_env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**keep, "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_the_wheel_installs_without_torch_and_serves_a_picture_question(
        venv: Path, tmp_path: Path) -> None:
    listed = pip(venv, "list", "--format", "json")
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "streamagent" in installed
    assert not installed & set(HEAVY), installed & set(HEAVY)
    with subprocess.Popen([str(venv / "bin/streamagent"), "serve", "--port", "0"], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=clean_env()) as proc:
        try:
            http = endpoint_from(proc).split("/v1/")[0].replace("ws://", "http://")
            health = httpx.get(f"{http}/healthz", timeout=10)
            assert health.status_code == 200, health.text
            assert set(health.json()["models"]) == {"asr", "faces", "ocr"}
            image = {"type": "image_url",
                     "image_url": {"url": data_url(jpeg_bytes("EXIT 12", size=(480, 200)))}}
            reply = httpx.post(f"{http}/v1/chat/completions", timeout=60, json={
                "model": "default", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "what is written here?"}, image]}]})
            assert reply.status_code == 200, reply.text
            assert "EXIT 12" in reply.json()["choices"][0]["message"]["content"]
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


@pytest.mark.slow
def test_ask_from_the_wheel_answers_without_a_server(venv: Path, tmp_path: Path) -> None:
    picture = tmp_path / "sign.jpg"
    picture.write_bytes(jpeg_bytes("OPEN 24", size=(480, 200)))
    out = subprocess.run([str(venv / "bin/streamagent"), "ask", str(picture),
                          "what is written here?"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=clean_env())
    assert out.returncode == 0, out.stderr
    assert "OPEN 24" in out.stdout
