"""Watch firings POSTed to a webhook: a real HTTP receiver on 127.0.0.1 (allowed by the config
for the test) gets each firing in order, retries end at the third try, a webhook that always
fails is an ``error`` event, and a URL the server does not allow is refused when it is set."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent import webhooks
from agent.config import ServerConfig
from agent.errors import StreamAgentError
from agent.runtime import Runtime
from agent.testing import data_url, fake_runtime, image_event
from agent.uvicorn_server import running
from agent.watches import Firing, Watch
from agent.webhooks import Webhooks
from tests.helpers import Client
from tests.test_watches import JudgePlugin, send_frames, soon


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST's JSON body and ``Host`` header and
    answers the statuses in ``answers`` in turn (then 200)."""

    def __init__(self, answers: tuple[int, ...] = ()) -> None:
        self.answers = list(answers)
        self.got: list[dict[str, Any]] = []
        self.hosts: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append(json.loads(body))
                receiver.hosts.append(self.headers["Host"])
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?k=1"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "BACKOFF_S", 0.05)


def allowing(on: bool = True, hosts: tuple[str, ...] = ("127.0.0.1/32",)) -> Runtime:
    runtime = fake_runtime(plugins=(JudgePlugin(),))
    runtime.config.server.webhooks = on
    runtime.config.server.fetch_allow_hosts = list(hosts)
    return runtime


@contextlib.asynccontextmanager
async def watching(runtime: Runtime, url: str) -> AsyncIterator[Client]:
    """A session on the judge whose watch "dark" POSTs to ``url``, the frames sent (it fires
    at 2 s and at 7 s)."""
    async with running(runtime) as served:
        client = await Client.connect(f"{served.ws}/v1/realtime?model=judge")
        session = await client.update(live=False, watches=[
            {"id": "dark", "condition": "The room is dark.", "cooldown_s": 0, "webhook": url}])
        assert session["streamagent"]["watches"][0]["webhook"] == url
        await send_frames(lambda jpeg, ts: client.send(image_event(data_url(jpeg), ts)))
        try:
            yield client
        finally:
            await client.close()


async def test_a_receiver_gets_each_firing_in_order_with_its_fields() -> None:
    with Receiver() as receiver:
        async with watching(allowing(), receiver.url) as client:
            for _ in range(2):
                await client.until("response.done")
            await soon(lambda: len(receiver.got) == 2)
    assert [(g["watch"], g["window_start_ms"], g["window_end_ms"], g["text"])
            for g in receiver.got] == [("dark", start, start + 1000,
                                        'watch "dark": The room is dark.')
                                       for start in (2000, 7000)]
    assert all(g["session"].startswith("sess") for g in receiver.got)
    assert receiver.got[0]["fired_at"] <= receiver.got[1]["fired_at"]
    assert set(receiver.got[0]) == {"watch", "session", "window_start_ms", "window_end_ms",
                                    "text", "fired_at"}
    assert receiver.hosts[0] == receiver.url.split("/")[2]


async def test_two_failures_then_the_third_try_gets_through(fast: None) -> None:
    with Receiver(answers=(500, 500)) as receiver:
        async with watching(allowing(), receiver.url) as client:
            for _ in range(2):
                await client.until("response.done")
            await soon(lambda: len(receiver.got) == 4)
            with pytest.raises(TimeoutError):  # no error: it got through
                await client.until("error", timeout=0.5)
    # the first firing three times, then the second: in order, though the first retried
    assert [g["window_start_ms"] for g in receiver.got] == [2000, 2000, 2000, 7000]
    assert receiver.got[0] == receiver.got[2]


async def test_a_webhook_that_always_fails_is_an_error_after_the_last_try(fast: None) -> None:
    with Receiver(answers=(503,) * 6) as receiver:
        async with watching(allowing(), receiver.url) as client:
            errors = [await client.error() for _ in range(2)]
    assert len(receiver.got) == 2 * webhooks.TRIES
    for error in errors:
        assert error["code"] == "webhook_failed", error
        assert "watch 'dark'" in error["message"] and receiver.url in error["message"]
        assert "3 times: HTTP 503" in error["message"]


async def test_a_name_that_resolves_to_a_local_address_is_refused_when_posting(
        fast: None) -> None:
    with Receiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "localhost")
        async with watching(allowing(hosts=()), url) as client:
            errors = [await client.error() for _ in range(2)]
    for error in errors:
        assert "private or local address" in error["message"] and url in error["message"]
    assert receiver.got == []


@pytest.mark.parametrize(("on", "url", "expected"), [
    (False, "http://203.0.113.9/hook", "webhooks are off on this server (server.webhooks)"),
    (True, "http://127.0.0.1:9/hook", "private or local address; refused "
                                      "(server.fetch_allow_hosts)"),
    (True, "http://[::1]/hook", "private or local address"),
    (True, "ftp://203.0.113.9/hook", "only http(s) URLs"),
    (True, "http://203.0.113.9:99999/", "webhook refused"),
])
async def test_a_disallowed_webhook_is_refused_naming_the_field(
        on: bool, url: str, expected: str) -> None:
    async with running(allowing(on, hosts=())) as served:
        client = await Client.connect(f"{served.ws}/v1/realtime?model=judge")
        await client.send({"type": "session.update", "session": {"streamagent": {"watches": [
            {"id": "a", "condition": "dark?", "model": "judge"},
            {"id": "b", "condition": "lit?", "model": "judge", "webhook": url}]}}})
        error = await client.error()
        await client.close()
    assert error["param"] == "session.streamagent.watches.1.webhook", error
    assert expected in error["message"] and "watch 'b'" in error["message"], error


async def test_posts_on_their_way_are_bounded_and_the_oldest_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "MAX_IN_FLIGHT", 2)
    told: list[StreamAgentError] = []

    async def tell(error: StreamAgentError) -> None:
        told.append(error)

    with Receiver() as receiver:
        hooks = Webhooks(ServerConfig(webhooks=True, fetch_allow_hosts=["127.0.0.1"]), "sess",
                         tell)
        watch = Watch("w", "face", "appears", webhook=receiver.url)
        for t in range(4):  # at once: none has started
            hooks.post(Firing(watch, t, t + 1.0))
        assert hooks.dropped == 2
        await soon(lambda: hooks.posted == 2)
        await hooks.close()
    # the first two were dropped; the newest two were posted, in order
    assert [g["window_start_ms"] for g in receiver.got] == [2000, 3000]
    assert hooks.failed == 0 and not told


def test_the_watch_command_passes_its_webhook_on() -> None:
    from agent.cli import watch_specs

    specs = watch_specs({"face": ("appears",), "condition": ("Dark?",)}, None, None, None,
                        "https://example.com/hook")
    assert [s["webhook"] for s in specs] == ["https://example.com/hook"] * 2
    assert "webhook" not in watch_specs({"face": ("leaves",)}, None, None, None)[0]
