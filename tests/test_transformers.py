"""Each model family on the transformers engine, end to end through the realtime endpoint, on
tiny random-weight checkpoints of the real architectures (built here, offline). Output is
gibberish: these tests check token counts, ordering, live windows and errors, with each family
named. Cancel and an utterance from ``listen``, on the same checkpoints and engine through the
same endpoint, are test_model_matrix.py's."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
import transformers  # noqa: F401  (a test dependency: fail loudly if missing)

from agent.config import Config, GenerationConfig, ModelConfig
from agent.errors import ConfigError
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.streamer import stream_file
from agent.testing import ServerThread, data_url, image_event, jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import Address
from tests.helpers import Client, assert_windows_told, endpoint_from, texts
from tests.media import flite_wav, read_wav, word_video

pytestmark = pytest.mark.slow
HANDLERS = {
    "qwen2-vl": ["describe", "video"],
    "qwen2.5-vl": ["describe", "video"],
    "qwen2-audio": ["listen"],
    "qwen2.5-omni": ["describe", "video", "listen"],
    "minicpm-v": ["describe", "video"],
    "minicpm-o": ["describe", "video", "listen"],
}
TOKENS = 8


IMAGE = sorted(f for f, h in HANDLERS.items() if "describe" in h)
ALL = sorted(HANDLERS)


@pytest.fixture(scope="module")
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[str, Address, Runtime]]:
    name = request.param
    source = str(build(name, tmp_path_factory.mktemp(name.replace(".", "_"))))
    handlers = HANDLERS[name]
    remote = name.startswith("minicpm")
    models = {
        "tiny": ModelConfig(engine="transformers", family=name, source=source, handlers=handlers,
                            trust_remote_code=remote,
                            generation=GenerationConfig(max_new_tokens=TOKENS,
                                                        min_new_tokens=TOKENS)),
    }
    runtime = Runtime.build(Config(models=models), get_plugin_manager())
    with ServerThread(runtime) as address:
        yield name, address, runtime


def engine(runtime: Runtime, model: str) -> Any:
    return runtime.pool.engines[model]  # type: ignore[attr-defined]


def speech_item(tmp_path: Path, text: str) -> dict[str, Any]:
    """A user item with a spoken sentence as input_audio (PCM16, 24 kHz) and a question."""
    speech, rate = read_wav(flite_wav(tmp_path / "q.wav", "hello world. what do you hear"))
    pcm = (np.clip(soxr.resample(speech, rate, 24000), -1, 1) * 32767).astype("<i2")
    return {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_audio", "audio": base64.b64encode(pcm).decode()},
                        {"type": "input_text", "text": text}]}}


@pytest.mark.parametrize("family", ALL, indirect=True)
async def test_question_streams_deltas_then_done(family: Any, tmp_path: Path) -> None:
    """Every family answers from the model: a picture for those that see, speech for those
    that only hear (the fallback answer has no model tokens and fails this)."""
    name, address, runtime = family
    client = await Client.connect(address.realtime)
    before = engine(runtime, "tiny").tokens_generated
    if "describe" in HANDLERS[name]:
        await client.send(image_event(data_url(jpeg_bytes("hi")), text="What is this?"))
    else:
        await client.send(speech_item(tmp_path, "What did you hear?"))
    await client.send({"type": "response.create"})
    got = await client.until("response.done", timeout=120)
    done = got[-1]["response"]
    assert done["status"] == "incomplete"  # min_new_tokens == max_new_tokens
    assert done["metadata"]["handler"] == "+".join(HANDLERS[name])
    assert texts(got), "no deltas"
    assert engine(runtime, "tiny").tokens_generated - before >= TOKENS
    await client.close()


@pytest.mark.parametrize("family", IMAGE, indirect=True)
async def test_live_video_gets_a_response_per_window(family: Any, tmp_path: Path) -> None:
    name, address, _ = family
    video = word_video(tmp_path / "v.mp4", ["ONE", "TWO", "THREE"])
    replies, _ = await stream_file(str(video), address.realtime, handlers=["describe"],
                                   send_fps=5, idle_s=2, speed=4, expect=3)
    assert_windows_told(replies, "describe", [(0, 1000), (1000, 2000), (2000, 3000)])
    assert all(r.status == "incomplete" and r.text for r in replies)


@pytest.mark.parametrize(("model", "words"), [
    (dict(family="qwen9", source="/nowhere"), "unknown family 'qwen9'"),
    (dict(family="qwen2-vl", source="/nowhere/at/all"), "no checkpoint at /nowhere/at/all"),
    (dict(family="qwen2-vl"), "no source"),
    (dict(family="minicpm-v", source="org/minicpm"), "set trust_remote_code: true"),
])
def test_bad_model_config_fails_at_start_up(model: dict[str, Any], words: str) -> None:
    config = Config(models={"m": ModelConfig(engine="transformers", **model)})
    with pytest.raises(ConfigError) as info:
        Runtime.build(config, get_plugin_manager())
    assert words in str(info.value)


def test_a_bad_dtype_fails_at_start_up(tmp_path: Path) -> None:
    """A checkpoint that exists, so the dtype check itself is what refuses."""
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_vl"}')
    model = ModelConfig(engine="transformers", family="qwen2-vl", source=str(tmp_path),
                        dtype="float8")
    with pytest.raises(ConfigError) as info:
        Runtime.build(Config(models={"m": model}), get_plugin_manager())
    assert "dtype 'float8' is not one of" in str(info.value)


def test_bad_model_config_is_one_clear_line_from_the_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("models:\n  qwen:\n    engine: transformers\n    family: qwen2-vl\n"
                   f"    source: {tmp_path}/missing\n    handlers: [describe]\n")
    out = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"model 'qwen': no checkpoint at {tmp_path}/missing" in out.stderr


def test_serve_with_family_and_source_flags(tmp_path: Path) -> None:
    """`streamagent serve --family F --source DIR` serves that model as the default profile."""
    import json
    import os

    import websockets.sync.client as ws_client

    source = build("qwen2-vl", tmp_path / "qwen")
    cmd = [sys.executable, "-m", "agent.cli", "serve", "--port", "0", "--family", "qwen2-vl",
           "--source", str(source)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        try:
            url = endpoint_from(proc)
            with ws_client.connect(url, max_size=None) as ws:
                session = json.loads(ws.recv())["session"]
                assert session["streamagent"]["handlers"] == ["describe", "video"]
                ws.send(json.dumps(image_event(data_url(jpeg_bytes("x")), text="what?")))
                ws.send(json.dumps({"type": "response.create"}))
                while (event := json.loads(ws.recv(timeout=60)))["type"] != "response.done":
                    assert event["type"] != "error", event
                assert event["response"]["status"] in ("completed", "incomplete")
        finally:
            proc.terminate()
            proc.wait(20)
