"""Running the gateway with uvicorn: from the CLI (blocking) or inside a test (a context)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from agent.config import ServerConfig
from agent.gateway import Gateway
from agent.runtime import Runtime

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server, but SIGINT/SIGTERM only start a graceful exit (uvicorn re-raises the
    signal afterwards, which would kill us before the models are closed)."""

    def __init__(self, config: uvicorn.Config, signals: bool) -> None:
        super().__init__(config)
        self.signals = signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.signals:
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, except for an upgrade request that websockets
    cannot parse (a request line or header over its 8 KiB limits, too many headers, not
    HTTP): websockets writes its 4xx reply, or none, and uvicorn never sends it nor closes the
    connection, which then stays open, uncounted, for as long as the client likes. Here the
    reply goes out and the connection is closed."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.handshake_exc is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except that it waits for a request's headers at most
    ``header_timeout_s``: uvicorn waits forever, so sockets that connect and send nothing, or
    a header byte at a time, stayed open uncounted (no session, no request yet)."""

    header_timeout_s = 30.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def on_message_begin(self) -> None:  # each request of a kept-alive connection
        super().on_message_begin()
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._headers_arrived()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._late)

    def _headers_arrived(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _late(self) -> None:
        log.info("closed a connection whose request headers took over %g s",
                 self.header_timeout_s)
        self.transport.close()


def uvicorn_config(gateway: Gateway, server: ServerConfig) -> uvicorn.Config:
    http = type("HttpProtocol", (_HttpProtocol,), {"header_timeout_s": server.read_timeout_s})
    return uvicorn.Config(
        gateway.app(),
        http=http,
        ws=_WebSocketProtocol,
        ws_max_size=server.max_message_bytes,
        ws_max_queue=16,
        ws_ping_interval=server.ping_interval_s,
        ws_ping_timeout=server.ping_interval_s,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=max(1, round(server.shutdown_timeout_s)),
        lifespan="on",
        log_config=None,
        access_log=False,
        ssl_certfile=server.tls_certfile,
        ssl_keyfile=server.tls_keyfile,
    )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it Nagle holds small deltas up to 40 ms (measured: 34-44 ms p50).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    tls: bool = False

    @property
    def http(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        host = "localhost" if host in ("0.0.0.0", "[::]") else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def ws(self) -> str:
        return "ws" + self.http.removeprefix("http")

    @property
    def realtime(self) -> str:
        return f"{self.ws}/v1/realtime?model=default"


def exposure_warning(server: ServerConfig) -> str | None:
    """A warning when the server listens beyond loopback with no API key (``None``: fine)."""
    if server.api_key:
        return None
    try:
        loopback = ipaddress.ip_address(server.host).is_loopback
    except ValueError:  # a host name
        loopback = server.host == "localhost"
    if loopback:
        return None
    return (f"listening on {server.host} without an API key: anyone who can reach this "
            "address can use the models; set --api-key (or STREAMAGENT_API_KEY), or listen "
            "on 127.0.0.1")


async def serve_forever(runtime: Runtime, announce: bool = True) -> None:
    """Bind the port (a clash fails at once), serve (``/healthz``: 503 ``loading``), load the
    models, then serve them until SIGINT/SIGTERM; close the models on the way out."""
    cfg = runtime.config.server
    if warning := exposure_warning(cfg):
        log.warning(warning)
    async with _serving(runtime, cfg.host, cfg.port, signals=True) as (addr, gateway, task):
        log.info("listening on %s; loading the models (GET /healthz: 503 until ready)",
                 addr.http)
        if await _load(gateway, task):
            if announce:
                print(f"streamagent is serving on {addr.http}\n"
                      f"  camera page:       {addr.http}/\n"
                      f"  realtime endpoint: {addr.realtime}\n"
                      f"  health:            {addr.http}/healthz", flush=True)
            await task
    log.info("stopped")


@contextlib.asynccontextmanager
async def running(runtime: Runtime, host: str = "127.0.0.1", port: int = 0,
                  wait_ready: bool = True) -> AsyncIterator[Address]:
    """Serve ``runtime`` (on a free port by default) inside the current event loop, once its
    models are loaded (``wait_ready=False``: at once, while they load)."""
    async with _serving(runtime, host, port, signals=False) as (addr, gateway, task):
        loading = asyncio.create_task(_load(gateway, task))
        try:
            if wait_ready:
                await loading
            yield addr
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading


async def _load(gateway: Gateway, server: asyncio.Task[None]) -> bool:
    """Load the models while the server runs: ``True`` once loaded, ``False`` when the server
    stopped first (SIGINT/SIGTERM while loading); a failed load raises."""
    load = asyncio.create_task(gateway.load(), name="load-models")
    try:
        await asyncio.wait({load, server}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not load.done():
            load.cancel()
            await asyncio.wait({load})
    if not load.cancelled():
        load.result()
        return True
    server.result()  # the server's own error, if it failed
    return False


@contextlib.asynccontextmanager
async def _serving(runtime: Runtime, host: str, port: int, signals: bool,
                   ) -> AsyncIterator[tuple[Address, Gateway, asyncio.Task[None]]]:
    """A started server (the port bound, requests answered) whose models are not loaded yet;
    on the way out: the server stopped, the models closed."""
    sock = bind(host, port)
    gateway = Gateway(runtime)
    server = _Server(uvicorn_config(gateway, runtime.config.server), signals=signals)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        tls = runtime.config.server.tls_certfile is not None
        yield Address(host, sock.getsockname()[1], tls=tls), gateway, task
    finally:
        server.should_exit = True
        await task
        sock.close()
        await runtime.pool.close()
