"""Media URLs in chat requests: fetched only when allowed, resolved once and connected to the
checked address, no redirect to a private or local address, size and time capped. Every server
here is on 127.0.0.1, which the tests allow-list where they need to reach it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from agent.errors import InvalidMedia, LimitExceeded
from agent.fetch import Fetcher
from agent.testing import FakeEngine, fake_runtime, jpeg_bytes
from agent.uvicorn_server import running

PICTURE = jpeg_bytes("fetched")


class Handler(BaseHTTPRequestHandler):
    hosts: list[str] = []

    def do_GET(self) -> None:
        Handler.hosts.append(self.headers.get("Host", ""))
        if self.path == "/a.jpg":
            self._send(200, PICTURE)
        elif self.path.startswith("/to/"):  # /to/URL: redirect there
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/to/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big":
            self._send(200, b"x" * 5000)
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gives up first
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
        else:
            self._send(404, b"")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetcher(**kw: Any) -> Fetcher:
    return Fetcher(**{"max_bytes": 100_000, "timeout_s": 5.0, "allow": ["127.0.0.1/32"], **kw})


def test_fetches_from_an_allowed_address(origin: str) -> None:
    assert fetcher()(f"{origin}/a.jpg", "p") == PICTURE


def test_loopback_refused_unless_allowed(origin: str) -> None:
    with pytest.raises(InvalidMedia, match="private or local"):
        fetcher(allow=[])(f"{origin}/a.jpg", "p")


def test_resolved_once_and_the_checked_address_is_the_one_connected(origin: str) -> None:
    """The name resolves (once) to the loopback test server; nothing else could resolve it,
    so a second lookup by the HTTP client would fail. The server sees the name as Host."""
    port = origin.rsplit(":", 1)[1]
    calls: list[str] = []

    def resolver(host: str, _: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    Handler.hosts.clear()
    assert fetcher(resolver=resolver)(f"http://media.invalid:{port}/a.jpg", "p") == PICTURE
    assert calls == ["media.invalid"] and Handler.hosts == [f"media.invalid:{port}"]


@pytest.mark.parametrize("target", ["http://10.1.2.3/x.jpg", "http://169.254.169.254/latest",
                                    "http://[::1]/x", "http://internal.invalid/x.jpg"])
def test_no_redirect_to_a_private_or_local_address(origin: str, target: str) -> None:
    def resolver(host: str, _: int) -> list[str]:
        return {"internal.invalid": ["10.9.8.7"]}.get(host, [host.strip("[]")])

    Handler.hosts.clear()
    with pytest.raises(InvalidMedia, match="private or local"):
        fetcher(resolver=resolver)(f"{origin}/to/{target}", "p")
    assert len(Handler.hosts) == 1  # the redirect target was never contacted


def test_a_name_with_any_private_address_is_refused() -> None:
    with pytest.raises(InvalidMedia, match="private or local"):
        fetcher(allow=[], resolver=lambda h, p: ["93.184.216.34", "10.0.0.1"])(
            "http://mixed.invalid/a.jpg", "p")


def test_redirects_followed_up_to_the_limit(origin: str) -> None:
    assert fetcher()(f"{origin}/to/{origin}/a.jpg", "p") == PICTURE
    twice = f"{origin}/to/{origin}/to/{origin}/a.jpg"
    with pytest.raises(InvalidMedia, match="fetch_max_redirects"):
        fetcher(max_redirects=1)(twice, "p")


def test_size_and_time_capped(origin: str) -> None:
    with pytest.raises(LimitExceeded, match="max_message_bytes"):
        fetcher(max_bytes=4000)(f"{origin}/big", "p")
    with pytest.raises((LimitExceeded, InvalidMedia)) as info:
        fetcher(timeout_s=0.5)(f"{origin}/slow", "p")
    assert "fetch_timeout_s" in info.value.message or "Timeout" in info.value.message


async def test_chat_completions_fetch_only_when_enabled(origin: str) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"{origin}/a.jpg"}},
        {"type": "text", "text": "what?"}]}]}

    async def post(payload: dict[str, Any], **server: Any) -> httpx.Response:
        runtime = fake_runtime()
        for key, value in server.items():
            setattr(runtime.config.server, key, value)
        async with running(runtime) as address, \
                httpx.AsyncClient(base_url=address.http) as http:
            reply = await http.post("/v1/chat/completions", json=payload)
        if reply.status_code == 200:
            engine = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
            assert isinstance(engine, FakeEngine)
            assert [i.shape for i in engine.requests[-1].images] == [(240, 320, 3)]
        return reply

    r = await post(body)
    assert r.status_code == 400 and "server.fetch_urls" in r.json()["error"]["message"]
    r = await post(body, fetch_urls=True)  # loopback, not allow-listed
    assert r.status_code == 400 and "private or local" in r.json()["error"]["message"]
    r = await post(body, fetch_urls=True, fetch_allow_hosts=["127.0.0.1"])
    assert r.status_code == 200, r.text
    redirected = {"model": "fake", "messages": [{"role": "user", "content": [{
        "type": "image_url", "image_url": {"url": f"{origin}/to/http://10.1.2.3/a.jpg"}}]}]}
    r = await post(redirected, fetch_urls=True, fetch_allow_hosts=["127.0.0.1"])
    assert r.status_code == 400 and "private or local" in r.json()["error"]["message"]
