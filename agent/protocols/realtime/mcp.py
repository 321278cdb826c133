"""A realtime session's ``{"type": "mcp"}`` tools: checked, connected (``agent.mcp``), and
their tools listed to the client as OpenAI's GA API lists them (an ``mcp_list_tools`` item,
``mcp_list_tools.in_progress``, then ``.completed`` or ``.failed``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent.errors import InvalidRequest, StreamAgentError
from agent.ids import new_id
from agent.mcp import Listing, McpClients, McpServer
from agent.protocols.realtime import events, wire
from agent.server_tools import ServerTool

Send = Callable[[dict[str, Any]], Awaitable[None]]


def servers(offered: list[wire.FunctionTool | wire.McpTool], param: str) -> list[McpServer]:
    """The MCP servers among ``offered``, each checked for what is served here."""
    out: list[McpServer] = []
    for i, tool in enumerate(offered):
        if not isinstance(tool, wire.McpTool):
            continue
        where = f"{param}.{i}"
        if not tool.server_url:
            raise InvalidRequest(f"MCP tool {tool.server_label!r} needs a server_url here "
                                 "(connectors are not served)", param=where)
        if not never_approve(tool.require_approval):
            raise InvalidRequest("MCP tool approval is not served: set require_approval to "
                                 '"never"', param=f"{where}.require_approval")
        allowed = tool.allowed_tools
        if isinstance(allowed, wire.McpToolFilter):
            if allowed.read_only:
                raise InvalidRequest("allowed_tools.read_only is not served: list "
                                     "tool_names", param=f"{where}.allowed_tools")
            allowed = allowed.tool_names
        out.append(McpServer(tool.server_label or f"mcp{i}", tool.server_url,
                             None if allowed is None else tuple(allowed),
                             dict(tool.headers or {})))
    return out


def never_approve(require: str | dict[str, wire.McpToolFilter | None] | None) -> bool:
    """Whether ``require_approval`` asks for no approval of any tool (``"never"``, or an
    object whose ``always`` names none)."""
    if require is None or isinstance(require, str):
        return require == "never"
    always = require.get("always")
    return set(require) <= {"always", "never"} and (
        always is None or (not always.tool_names and not always.read_only))


async def offer(clients: McpClients, found: list[McpServer], send: Send,
                param: str) -> dict[str, ServerTool]:
    """Connect to ``found`` (the old connections closed), tell the client each listing, and
    return the tools listed, by name (a name listed twice: the first server's)."""
    tools: dict[str, ServerTool] = {}
    for listing in await clients.open(found, param):
        await _announce(listing, send)
        for tool in listing.tools:
            tools.setdefault(tool.name, tool)
    return tools


async def _announce(listing: Listing, send: Send) -> None:
    item: dict[str, Any] = {"id": new_id("item"), "type": "mcp_list_tools",
                            "server_label": listing.server.label, "tools": []}
    await send(events.event("conversation.item.added", previous_item_id=None, item=item))
    await send(events.event("mcp_list_tools.in_progress", item_id=item["id"]))
    if listing.error:
        await send(events.event("mcp_list_tools.failed", item_id=item["id"]))
        await send(events.error(StreamAgentError(
            f"listing the tools of MCP server {listing.server.label!r} failed: "
            f"{listing.error}")))
    else:
        await send(events.event("mcp_list_tools.completed", item_id=item["id"]))
    item = item | {"tools": list(listing.schemas)}
    await send(events.event("conversation.item.done", previous_item_id=None, item=item))


def entries(offered: list[wire.FunctionTool | wire.McpTool]) -> list[dict[str, Any]]:
    """The MCP tools of ``offered`` as the session object shows them (headers left out)."""
    return [t.model_dump(exclude={"headers"}, exclude_none=True) for t in offered
            if isinstance(t, wire.McpTool)]
