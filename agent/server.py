"""The gateway: an ASGI app with the realtime websocket, health, and auth before the upgrade."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from agent import events
from agent.errors import StreamAgentError
from agent.runtime import Runtime
from agent.session import RealtimeSession

log = logging.getLogger(__name__)
CLOSE_POLICY = 1008


class Gateway:
    """Holds the runtime and the open sessions; builds the Starlette app."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.sessions: set[RealtimeSession] = set()
        self.ready = asyncio.Event()

    def app(self) -> Starlette:
        routes = [
            Route("/healthz", self.healthz),
            WebSocketRoute("/v1/realtime", self.realtime),
            WebSocketRoute("/v1/realtime/", self.realtime),
            Mount("/", StaticFiles(packages=[("agent", "static")], html=True), name="page"),
        ]
        return Starlette(routes=routes)

    async def healthz(self, request: Request) -> JSONResponse:
        models = await self.runtime.pool.health()
        ok = self.ready.is_set() and all(models.values())
        body = {"status": "ok" if ok else "unavailable", "sessions": len(self.sessions),
                "models": models, "profiles": self.runtime.profile_names}
        return JSONResponse(body, status_code=200 if ok else 503)

    def _authorized(self, ws: WebSocket) -> bool:
        key = self.runtime.config.server.api_key
        if not key:
            return True
        given = ws.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not token:  # browsers cannot set headers: accept the key as a subprotocol too
            protocols = ws.headers.get("sec-websocket-protocol", "")
            for proto in (p.strip() for p in protocols.split(",")):
                if proto.startswith("openai-insecure-api-key."):
                    token = proto.removeprefix("openai-insecure-api-key.")
        return hmac.compare_digest(token.encode(), key.encode())

    async def realtime(self, ws: WebSocket) -> None:
        if not self._authorized(ws):
            await _deny(ws, 401, "invalid_api_key", "missing or invalid API key")
            return
        if len(self.sessions) >= self.runtime.config.server.max_sessions:
            await _deny(ws, 503, "too_many_sessions", "the server is at its session limit")
            return
        model = ws.query_params.get("model") or "default"
        subprotocol = _pick_subprotocol(ws)
        await ws.accept(subprotocol=subprotocol)
        try:
            session = RealtimeSession(self.runtime, model, ws.send_text)
        except StreamAgentError as exc:
            await ws.send_text(json.dumps(events.error(exc)))
            await ws.close(CLOSE_POLICY, reason=exc.message[:120])
            return
        self.sessions.add(session)
        log.info("session %s opened (model %s)", session.id, model)
        try:
            await session.run(_messages(ws))
        except WebSocketDisconnect:
            pass
        finally:
            self.sessions.discard(session)


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
    await ws.send_denial_response(JSONResponse(body, status_code=status))

