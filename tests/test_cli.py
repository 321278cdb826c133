"""The `streamagent` command as a person runs it: serve, SIGTERM, --help, bad config."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from agent.uvicorn_server import Address
from tests.helpers import endpoint_from
from tests.media import word_video

CLI = [sys.executable, "-m", "agent.cli"]


def test_help_answers_questions() -> None:
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("serve", "stream", "watch", "plugins"):
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


def test_watch_help_answers_questions() -> None:
    out = subprocess.run([*CLI, "watch", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("URL_OR_FILE", "--text-contains", "--face [appears|leaves]",
                 "--speech-contains", "--condition", "--model", "--cooldown-s",
                 "--confirm-windows", "--server URL"):
        assert flag in out, flag
    assert "[default:ws://127.0.0.1:8000/v1/realtime?model=default]" in "".join(out.split())
    assert "streamagent watch door.mp4 --text-contains EXIT" in out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_served(folder: Path) -> Iterator[str]:
    """``folder`` over plain HTTP on a free port: its URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join(5)


@pytest.mark.slow
@pytest.mark.parametrize("over_http", [False, True], ids=["file", "url"])
def test_watch_prints_each_firing_of_a_video(embedded: Address, tmp_path: Path,
                                             over_http: bool) -> None:
    """A sign that appears at 1 s and at 6 s: two firings, each within 2 windows of the change
    (sent at twice real time); the other watches see nothing to fire for."""
    # over HTTP a WebM: an MP4's index comes last, which a server without ranges cannot seek to
    video = word_video(tmp_path / ("exit.webm" if over_http else "exit.mp4"),
                       ["", "EXIT", "EXIT", "EXIT", "", "", "EXIT", "EXIT", "EXIT", ""])
    with contextlib.ExitStack() as stack:
        source = (f"{stack.enter_context(http_served(tmp_path))}/{video.name}" if over_http
                  else str(video))
        out = subprocess.run(
                [*CLI, "watch", source, "--server", embedded.realtime, "--text-contains", "exit",
             "--text-contains", "ENTRANCE", "--face", "appears", "--cooldown-s", "1",
             "--speed", "2", "--idle", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, lines
    for line, change_s in zip(lines, (1, 6), strict=True):
        found = re.fullmatch(r'\[00:(\d\d)\.000-00:(\d\d)\.000\] '
                             r'watch "text:exit": text "exit" in view', line)
        assert found, line
        assert change_s <= int(found[1]) < change_s + 2 and int(found[2]) == int(found[1]) + 1
    assert "sent 100 frames" in out.stderr


@pytest.mark.slow
def test_watch_says_what_the_server_refused(embedded: Address, tmp_path: Path) -> None:
    video = word_video(tmp_path / "short.mp4", ["EXIT"])
    refused = subprocess.run(
        [*CLI, "watch", str(video), "--server", embedded.realtime, "--condition", "A door."],
        capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "watch 'condition:1': no LLM in this session to decide a condition" in refused.stderr
    for args, message in ((["--model", "qwen", "--face", "leaves"], "--model goes with "
                            "--condition"), ([], "name something to watch for"),
                          (["--face", "appears", "--face", "appears"], "face:appears is given "
                           "twice")):
        usage = subprocess.run([*CLI, "watch", str(video), *args], capture_output=True,
                               text=True, timeout=60)
        assert usage.returncode == 2 and message in usage.stderr, usage.stderr
