"""What an operator sees: the port bound before the models load (``/healthz`` says
``loading``), log lines with date and milliseconds or JSON, the access log, the client on
session lines, a warning for an open server without a key, and the model queue, tokens and
process figures on ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from agent.config import Config, ProfileConfig, ServerConfig
from agent.logs import configure
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakePlugin, fake_runtime
from agent.uvicorn_server import running, serve_forever
from tests.helpers import Client, endpoint_from
from tests.test_metrics import grew, scrape

CLI = [sys.executable, "-m", "agent.cli"]
CHAT = {"model": "default", "messages": [{"role": "user", "content": "one two three"}]}


async def test_healthz_says_loading_and_models_wait_until_they_are_loaded() -> None:
    async with running(fake_runtime(load_delay_s=1.5), wait_ready=False) as address:
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{address.http}/healthz")
            assert health.status_code == 503 and health.json()["status"] == "loading"
            chat = await http.post(f"{address.http}/v1/chat/completions", json=CHAT)
            assert chat.status_code == 503 and chat.json()["error"]["code"] == "loading"
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(address.realtime)
            assert refused.value.response.status_code == 503
            began = time.monotonic()
            while (health := await http.get(f"{address.http}/healthz")).status_code == 503:
                assert time.monotonic() - began < 10, health.json()
                await asyncio.sleep(0.05)
            assert health.json()["status"] == "ok"
            chat = await http.post(f"{address.http}/v1/chat/completions", json=CHAT)
            assert chat.status_code == 200, chat.text


async def test_a_port_clash_fails_at_once_not_after_the_models_load() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config(server=ServerConfig(port=port),
                        profiles={"default": ProfileConfig(handlers=["echo"])})
        runtime = Runtime.build(config, get_plugin_manager([FakePlugin(load_delay_s=30)]))
        # the models take 30 s to load: the clash is told well before (bound, then load)
        with pytest.raises(OSError, match="in use"):
            await asyncio.wait_for(serve_forever(runtime, announce=False), 10)



def test_log_lines_carry_the_date_and_milliseconds_or_are_json(
        root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "text")
    logging.getLogger("agent.test").info("hello %s", "there")
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO    agent\.test: hello there",
                        line), line
    configure("info", "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("agent.test").exception("it \"failed\"")
    record = json.loads(capsys.readouterr().err)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert (record["level"], record["logger"], record["message"]) == \
        ("ERROR", "agent.test", 'it "failed"')
    assert "ValueError: boom" in record["exception"]


async def test_access_log_and_the_client_on_session_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    config = Config(server=ServerConfig(access_log=True),
                    profiles={"default": ProfileConfig(handlers=["echo"])})
    runtime = Runtime.build(config, get_plugin_manager([FakePlugin()]))
    caplog.set_level(logging.INFO)
    async with running(runtime) as address:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{address.http}/healthz")).status_code == 200
            assert (await http.get(f"{address.http}/nothing-here")).status_code == 404
        client = await Client.connect(address.realtime)
        port = client.ws.local_address[1]
        await client.close()
        async with httpx.AsyncClient() as http:  # a Gemini socket's key stays out of the log
            reply = await http.get(f"{address.http}/healthz?key=SECRET&x=1")
            assert reply.status_code == 200
        await asyncio.sleep(0.1)
    access = [r.getMessage() for r in caplog.records if r.name == "streamagent.access"]
    assert any(re.fullmatch(r'127\.0\.0\.1:\d+ "GET /healthz" 200 \d+\.\d ms', a)
               for a in access), access
    assert any('"GET /nothing-here" 404' in a for a in access), access
    assert any(f'127.0.0.1:{port} "WS /v1/realtime?model=default" 101' in a
               for a in access), access
    assert not any("SECRET" in a for a in access) and any("key=%2A%2A%2A&x=1" in a
                                                            for a in access), access
    opened = [r.getMessage() for r in caplog.records if "opened" in r.getMessage()]
    assert any(m.endswith(f"(model default, client 127.0.0.1:{port})") for m in opened), opened


async def test_no_access_log_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running(fake_runtime()) as address, httpx.AsyncClient() as http:
        assert (await http.get(f"{address.http}/healthz")).status_code == 200
    assert not [r for r in caplog.records if r.name == "streamagent.access"]


@pytest.mark.parametrize(("host", "key", "warned"), [
    ("0.0.0.0", None, True), ("::", None, True), ("192.0.2.7", None, True),
    ("example.internal", None, True), ("0.0.0.0", "k", False), ("127.0.0.1", None, False),
    ("127.0.0.2", None, False), ("::1", None, False), ("localhost", None, False)])
def test_a_server_open_beyond_loopback_without_a_key_is_warned_about(
        host: str, key: str | None, warned: bool) -> None:
    from agent.uvicorn_server import exposure_warning

    warning = exposure_warning(ServerConfig(host=host, api_key=key))
    assert (warning is not None) == warned
    if warning:
        assert host in warning and "--api-key" in warning


def test_serve_warns_logs_json_and_binds_before_loading(tmp_path: Path) -> None:
    """The CLI: ``--host 0.0.0.0`` without a key is warned about, ``--log-format json``
    writes JSON lines, and the port is listening before the models are loaded."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STREAMAGENT_PLUGINS": "faces"}
    with subprocess.Popen([*CLI, "serve", "--host", "0.0.0.0", "--port", "0", "--log-format",
                           "json", "--access-log"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            url = endpoint_from(proc)  # printed once the models are loaded
            port = int(url.split(":")[2].split("/")[0])
            reply = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
            assert reply.status_code == 200, reply.text
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    warning = next(m for m in messages if "without an API key" in m)
    assert "0.0.0.0" in warning
    listening = messages.index(next(m for m in messages if m.startswith("listening on")))
    loading = messages.index(next(m for m in messages if m.startswith("loading model faces")))
    assert listening < loading
    assert any(m.endswith('"GET /healthz" 200') or '"GET /healthz" 200' in m for m in messages)


async def test_metrics_count_the_model_queue_tokens_and_the_process() -> None:
    runtime = fake_runtime(tokens=4, delay_s=0.2)  # one worker: a second request waits
    async with running(runtime) as address, httpx.AsyncClient(timeout=30) as http:
        before = await scrape(address)
        first = asyncio.create_task(http.post(f"{address.http}/v1/chat/completions", json=CHAT))
        second = asyncio.create_task(http.post(f"{address.http}/v1/chat/completions",
                                               json=CHAT))
        await asyncio.sleep(0.3)
        during = await scrape(address)
        assert (await first).status_code == 200 and (await second).status_code == 200
        after = await scrape(address)
    assert during["streamagent_model_queue_depth{model=fake}"] == 1
    assert after["streamagent_model_queue_depth{model=fake}"] == 0
    assert grew(before, after, "streamagent_model_queue_wait_seconds_count{model=fake}") == 2
    assert grew(before, after, "streamagent_model_queue_wait_seconds_sum{model=fake}") > 0.3
    # "one two three": 6 tokens of the tiny checkpoints' tokenizer, twice
    assert grew(before, after, "streamagent_prompt_tokens_total{model=fake}") == 12
    assert grew(before, after, "streamagent_completion_tokens_total{model=fake}") == 8
    assert after["process_resident_memory_bytes"] > 10e6
    assert after["process_cpu_seconds_total"] > 0
    assert "python_gc_collections_total{generation=0}" in after
