"""Tools on the realtime wire: the client's functions and ``tool_choice``, in and out."""

from __future__ import annotations

from agent.engine import TOOL_CHOICES, Tool
from agent.errors import InvalidRequest
from agent.protocols.realtime import wire


def tools(offered: list[wire.FunctionTool | wire.McpTool] | None,
          param: str) -> tuple[Tool, ...] | None:
    """The client's functions (``None``: unchanged). MCP servers (``agent.mcp``) are served
    in ``session.tools`` only."""
    if offered is None:
        return None
    for i, tool in enumerate(offered):
        if isinstance(tool, wire.McpTool) and param != "session.tools":
            raise InvalidRequest(
                f"MCP tools are served in session.tools only (server_label "
                f"{tool.server_label!r})", param=f"{param}.{i}")
    return tuple(Tool(t.name, t.description, t.parameters) for t in offered
                 if isinstance(t, wire.FunctionTool))


def choice_object(choice: str) -> str | dict[str, str]:
    """A ``tool_choice`` as the GA session object shows it."""
    return choice if choice in TOOL_CHOICES else {"type": "function", "name": choice}


def tool_choice(choice: wire.ToolChoice | None) -> str | None:
    """``auto``, ``none``, ``required`` or a function's name (``None``: unchanged)."""
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, wire.McpChoice):
        if not choice.name:
            raise InvalidRequest("an MCP tool_choice needs the tool's name",
                                 param="tool_choice.name")
    return choice.name
