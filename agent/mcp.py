"""MCP servers a realtime session names as tools, run as server tools (``agent.server_tools``).

The operator lists the servers sessions may use (``server.mcp_servers``, URL prefixes; none by
default: MCP is off). Each URL is checked like a fetch (``agent.fetch``): its host must resolve
to public addresses, or to ones ``server.fetch_allow_hosts`` allows. A session connects to at
most ``MAX_SERVERS`` (streamable HTTP, ``mcp`` package), lists their tools, and offers each to
the model as a ``ServerTool`` labelled with its server; a call runs ``tools/call`` there,
bounded like every server tool. Connections close when the tools change or the session ends.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import ServerConfig
from agent.errors import InvalidRequest
from agent.fetch import Fetcher
from agent.server_tools import TIMEOUT_S, ServerTool, ToolContext, ToolResult

MAX_SERVERS = 4
"""MCP servers one session may name at once."""
CONNECT_TIMEOUT_S = 10.0
"""Time to connect to an MCP server and list its tools."""


@dataclass(frozen=True, slots=True)
class McpServer:
    """One ``{"type": "mcp"}`` tool of a session: where, and which of its tools."""

    label: str
    url: str
    allowed_tools: tuple[str, ...] | None = None
    """The tools offered (``None``: all it lists)."""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Listing:
    """A server's tools as listed (``error``: listing failed, and ``tools`` is empty)."""

    server: McpServer
    tools: tuple[ServerTool, ...] = ()
    schemas: tuple[dict[str, Any], ...] = ()
    """Each tool as the ``mcp_list_tools`` item shows it."""
    error: str = ""


def check_url(url: str, config: ServerConfig, param: str) -> None:
    """Refuse ``url`` unless the operator allows it and its host resolves as a fetch's must."""
    if not config.mcp_servers:
        raise InvalidRequest("MCP tools are off on this server (server.mcp_servers lists "
                             "none)", param=param)
    if not any(url.startswith(prefix) for prefix in config.mcp_servers):
        raise InvalidRequest(f"MCP server {url!r} is not one server.mcp_servers allows",
                             param=param)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"MCP server {url!r} is not an http(s) URL", param=param)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        Fetcher(1, allow=config.fetch_allow_hosts).check_host(parts.hostname, port, param)
    except InvalidRequest as exc:
        raise InvalidRequest(f"MCP server {url!r}: {exc}", param=param) from None


class McpClients:
    """A session's MCP connections, owned: ``open`` replaces them all, ``close`` ends them.
    Each connection lives in a task of its own (its transport's task group is entered and
    left there), which ``close`` stops."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, servers: list[McpServer], param: str) -> list[Listing]:
        """Close the current connections, check ``servers`` and list their tools."""
        await self.close()
        if len(servers) > MAX_SERVERS:
            raise InvalidRequest(f"at most {MAX_SERVERS} MCP servers per session", param=param)
        for server in servers:
            await asyncio.to_thread(check_url, server.url, self.config, param)
        return [await self._list(server) for server in servers]

    async def close(self) -> None:
        tasks, self.tasks = self.tasks, []
        self.stop.set()
        self.stop = asyncio.Event()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CONNECT_TIMEOUT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _list(self, server: McpServer) -> Listing:
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.tasks.append(asyncio.create_task(self._hold(server, ready, self.stop)))
        try:
            session = await asyncio.wait_for(asyncio.shield(ready), CONNECT_TIMEOUT_S)
            listed = await asyncio.wait_for(session.list_tools(), CONNECT_TIMEOUT_S)
        except Exception as exc:  # the client hears it as mcp_list_tools.failed
            return Listing(server, error=f"{server.url}: {exc!r}")
        chosen = [t for t in listed.tools
                  if server.allowed_tools is None or t.name in server.allowed_tools]
        return Listing(server, tuple(_tool(session, server.label, t) for t in chosen),
                       tuple({"name": t.name, "description": t.description or "",
                              "input_schema": t.input_schema} for t in chosen))

    @staticmethod
    async def _hold(server: McpServer, ready: asyncio.Future[Any], stop: asyncio.Event) -> None:
        """Connect, hand the client over, and hold the connection until ``stop``."""
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        try:
            async with create_mcp_http_client(headers=dict(server.headers)) as http, Client(
                    streamable_http_client(server.url, http_client=http),
                    read_timeout_seconds=TIMEOUT_S) as client:
                ready.set_result(client)
                await stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)


def _tool(session: Any, label: str, listed: Any) -> ServerTool:
    async def run(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        result = await session.call_tool(listed.name, arguments)
        text = "\n".join(getattr(c, "text", "") or f"[{c.type}]" for c in result.content)
        if result.is_error:
            raise RuntimeError(text or "the MCP server reported an error")
        return ToolResult(text)

    return ServerTool(listed.name, listed.description or "", run,
                      listed.input_schema or {"type": "object", "properties": {}}, label)
