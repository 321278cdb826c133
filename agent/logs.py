"""Log lines: the date and milliseconds in text, or one JSON object per line; and the access log
(one line per HTTP request and websocket handshake, off by default: ``server.access_log``)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TEXT_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
FORMATS = ("text", "json")
access = logging.getLogger("streamagent.access")


class JsonFormatter(logging.Formatter):
    """``{"time": "2026-12-05T09:30:54.123Z", "level": "INFO", "logger": ..., "message": ...}``
    (UTC), and ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (``text`` or ``json``), replacing what was set."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else logging.Formatter(TEXT_FORMAT, DATE_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def access_log(app: ASGIApp) -> ASGIApp:
    """``app``, logging each HTTP request when its response ends and each websocket handshake
    when it is answered: client, method and path, status (101: upgraded), milliseconds."""

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        began, status = time.perf_counter(), 0

        async def sending(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close" and not status:
                status = 403  # closed before the handshake: the server answers 403
            await send(message)
            if kind == "websocket.accept" or (kind == "websocket.close" and status == 403) or (
                    kind.endswith("response.body") and not message.get("more_body")):
                _line(scope, status, began)

        await app(scope, receive, sending)

    return logged


def _line(scope: Scope, status: int, began: float) -> None:
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "-"
    method = scope.get("method", "WS")
    query = _redacted(scope.get("query_string", b"").decode("latin-1"))
    access.info('%s "%s %s%s" %d %.1f ms', who, method, scope.get("path", ""), query, status,
                (time.perf_counter() - began) * 1000)


def _redacted(query: str) -> str:
    """The query string with an API key (Gemini's ``key=``) hidden."""
    if not query:
        return ""
    pairs = [(k, "***" if k == "key" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return "?" + urlencode(pairs)
