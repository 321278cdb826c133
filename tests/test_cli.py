"""The `streamagent` command as a person runs it: serve, SIGTERM, --help, bad config."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

from tests.helpers import endpoint_from

CLI = [sys.executable, "-m", "agent.cli"]


def test_help_answers_questions() -> None:
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("serve", "stream", "plugins"):
        assert command in out
    serve = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True).stdout
    assert "--port" in serve and "--config" in serve and "STREAMAGENT_API_KEY" in serve


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models:\n  big:\n    engine: warp-drive\n")
    out = subprocess.run([*CLI, "serve", "--config", str(cfg), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "model 'big' uses engine 'warp-drive'" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_serve_prints_its_url_and_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  port: 0\n  shutdown_timeout_s: 2\n")
    with subprocess.Popen([*CLI, "serve", "--config", str(cfg)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        try:
            code, returncode = _serve_then_sigterm(proc)
        finally:
            proc.kill()
        assert code == 1012  # "service restart"
        assert returncode == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def _serve_then_sigterm(proc: subprocess.Popen[str]) -> tuple[int, int]:
    url = endpoint_from(proc)
    assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime?model=default")

    async def hold_a_session() -> int:
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd is not None
            return info.value.rcvd.code

    code = asyncio.run(hold_a_session())
    return code, proc.wait(15)
