"""The gateway: an ASGI app with the realtime websocket, health, and auth before the upgrade."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from agent import metrics
from agent.errors import StreamAgentError
from agent.heap import HeapTrimmer
from agent.logs import access_log
from agent.looplag import LoopLag
from agent.protocols.chat.api import ChatAPI
from agent.protocols.gemini import session as gemini
from agent.protocols.realtime import beta, events
from agent.protocols.realtime.session import RealtimeSession
from agent.runtime import Runtime

log = logging.getLogger(__name__)
CLOSE_POLICY = 1008
_denied: ContextVar[bool] = ContextVar("denied", default=False)


class _ClientMistakeFilter(logging.Filter):
    """Two lines uvicorn's websockets-sansio protocol logs at ERROR for what a client did:

    - "ASGI callable returned without completing handshake" after every denial response
      (uvicorn's Kludex/uvicorn#3138): dropped for a socket this gateway turned away on purpose
      (bad key, session limit); any other socket that returns without a handshake is still a
      bug, and still logged.
    - "Invalid UTF-8 sequence received from client", with a traceback: the client gets close
      code 1007; logged at INFO, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("ASGI callable returned without completing handshake"):
            return not _denied.get()
        if message.startswith("Invalid UTF-8 sequence received from client"):
            record.levelno, record.levelname, record.exc_info = logging.INFO, "INFO", None
        return True


_CLIENT_MISTAKES = _ClientMistakeFilter()


class Gateway:
    """Holds the runtime and the open sessions; builds the Starlette app. It serves before the
    models are loaded (``load``): until then ``/healthz`` says ``loading`` and every model
    endpoint answers 503 ``loading``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.sessions: set[RealtimeSession] = set()
        self.ready = asyncio.Event()
        self.loop_lag = LoopLag()
        self.heap = HeapTrimmer(runtime.config.server.heap_trim_interval_s)
        # one filter object: adding it again for another gateway changes nothing
        logging.getLogger("uvicorn.error").addFilter(_CLIENT_MISTAKES)

    async def load(self) -> None:
        """Load the models (``Runtime.start``), then admit clients."""
        await self.runtime.start()
        gc.freeze()  # the models: collections walk only what comes after
        self.ready.set()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        gc.freeze()  # the modules: collections walk only what comes after
        tasks = [asyncio.create_task(self.loop_lag.watch(), name="loop-lag"),
                 asyncio.create_task(self.heap.watch(), name="heap-trim")]
        try:
            yield
        finally:
            gc.unfreeze()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def app(self) -> ASGIApp:
        chat = ChatAPI(self.runtime)
        routes = [
            Route("/healthz", self.healthz),
            Route("/metrics", self.metrics),
            Route("/v1/models", self._http_auth(chat.models)),
            Route("/v1/models/{name:path}", self._http_auth(chat.model)),
            Route("/v1/chat/completions", self._http_auth(chat.completions), methods=["POST"]),
            WebSocketRoute("/v1/realtime", self.realtime),
            WebSocketRoute("/v1/realtime/", self.realtime),
            WebSocketRoute(gemini.PATH, self.gemini),
            Mount("/", StaticFiles(packages=[("agent", "static")], html=True), name="page"),
        ]
        app = collapse_slashes(Starlette(routes=routes, lifespan=self._lifespan))
        return access_log(app) if self.runtime.config.server.access_log else app

    def _http_auth(self, endpoint: Callable[[Request], Awaitable[Response]],
                   ) -> Callable[[Request], Awaitable[Response]]:
        async def checked(request: Request) -> Response:
            if not self._key_ok(_bearer(request.headers.get("authorization", ""))):
                return _http_error(401, "invalid_api_key", "missing or invalid API key")
            if not self.ready.is_set():
                return _http_error(503, "loading", LOADING)
            try:
                return await endpoint(request)
            finally:
                self.heap.mark()

        return checked

    def _key_ok(self, token: str) -> bool:
        key = self.runtime.config.server.api_key
        return not key or hmac.compare_digest(token.encode(), key.encode())

    async def _admit(self, ws: WebSocket, token: str) -> bool:
        """The API key and the session limit, checked before the upgrade."""
        if not self._key_ok(token):
            await _deny(ws, 401, "invalid_api_key", "missing or invalid API key")
            return False
        if not self.ready.is_set():
            await _deny(ws, 503, "loading", LOADING)
            return False
        if len(self.sessions) >= self.runtime.config.server.max_sessions:
            await _deny(ws, 503, "too_many_sessions", "the server is at its session limit")
            return False
        return True

    async def gemini(self, ws: WebSocket) -> None:
        token = ws.headers.get("x-goog-api-key") or ws.query_params.get("key") or \
            _bearer(ws.headers.get("authorization", ""))
        if await self._admit(ws, token):  # the session counts itself before it accepts
            log.info("gemini session opening (client %s)", _client(ws))
            try:
                await gemini.GeminiSession(self.runtime, ws, self.sessions).run()
            finally:
                self.heap.mark()

    async def healthz(self, request: Request) -> JSONResponse:
        if not self.ready.is_set():
            return JSONResponse({"status": "loading", "profiles": self.runtime.profile_names},
                                status_code=503)
        models = await self.runtime.pool.health()
        ok = all(models.values())
        body = {"status": "ok" if ok else "unavailable", "sessions": len(self.sessions),
                "tasks": len(asyncio.all_tasks()), "loop_lag_ms": self.loop_lag.summary_ms(),
                "models": models, "profiles": self.runtime.profile_names}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        """Prometheus text format (names: docs/config.md)."""
        self._gauges()
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    def _gauges(self) -> None:
        metrics.sessions.set(len(self.sessions))
        metrics.queue_depth.set(sum(s.outbox.qsize() for s in self.sessions
                                    if isinstance(s, RealtimeSession)))

    async def realtime(self, ws: WebSocket) -> None:
        token = _bearer(ws.headers.get("authorization", ""))
        if not token:  # browsers cannot set headers: accept the key as a subprotocol too
            protocols = ws.headers.get("sec-websocket-protocol", "")
            for proto in (p.strip() for p in protocols.split(",")):
                if proto.startswith("openai-insecure-api-key."):
                    token = proto.removeprefix("openai-insecure-api-key.")
        if not await self._admit(ws, token):
            return
        model = ws.query_params.get("model") or "default"
        subprotocol = _pick_subprotocol(ws)
        await ws.accept(subprotocol=subprotocol)
        dialect = beta.requested(ws.headers)  # the beta dialect: translated at the socket
        try:
            session = RealtimeSession(self.runtime, model, ws.send_text,
                                      beta.server_event if dialect else None)
        except StreamAgentError as exc:
            await ws.send_text(json.dumps(events.error(exc)))
            await ws.close(CLOSE_POLICY, reason=exc.message[:120])
            return
        self.sessions.add(session)
        self._gauges()
        log.info("session %s opened (model %s, client %s)", session.id, model, _client(ws))
        try:
            await session.run(beta.messages(_messages(ws)) if dialect else _messages(ws))
        except WebSocketDisconnect:
            pass
        finally:
            self.sessions.discard(session)
            self._gauges()
            self.heap.mark()
        if session.outbox.close_code is not None:
            await close_quietly(ws, session.outbox.close_code, session.outbox.close_reason)


async def close_quietly(ws: WebSocket, code: int, reason: str, timeout_s: float = 1.0) -> None:
    """Close a socket whose client may not be reading: the close frame waits behind unread
    data, so give up after ``timeout_s`` (the session is already gone either way)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code, reason=reason[:120]), timeout_s)


LOADING = "the server is loading its models; try again shortly (GET /healthz says when)"


def _http_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": code}}, status_code=status)


def _client(ws: WebSocket) -> str:
    client = ws.client
    return f"{client.host}:{client.port}" if client else "unknown"


def _bearer(header: str) -> str:
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def collapse_slashes(app: ASGIApp) -> ASGIApp:
    """``//ws/...`` -> ``/ws/...``: some SDK versions join a base URL ending in a slash."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if "//" in path:
            scope = {**scope, "path": re.sub("/{2,}", "/", path)}
        await app(scope, receive, send)

    return wrapped


async def _messages(ws: WebSocket) -> AsyncIterator[str | bytes]:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        yield text if text is not None else message.get("bytes") or b""


def _pick_subprotocol(ws: WebSocket) -> str | None:
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",")]
    return "realtime" if "realtime" in offered else None


async def _deny(ws: WebSocket, status: int, code: str, message: str) -> None:
    body: dict[str, Any] = {"error": {"type": "invalid_request_error", "code": code,
                                      "message": message}}
    _denied.set(True)  # this task's socket: read by the log filter when the app returns
    await ws.send_denial_response(JSONResponse(body, status_code=status))

