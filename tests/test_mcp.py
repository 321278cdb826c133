"""MCP tools in a realtime session (``agent.mcp``): a real MCP server (the ``mcp`` package's
MCPServer, streamable HTTP, on 127.0.0.1 port 0) listed and called as OpenAI's GA API shows it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer

from agent.runtime import Runtime
from agent.testing import data_url, fake_runtime, image_event, jpeg_bytes
from agent.uvicorn_server import running
from tests.helpers import Client
from tests.test_wire_schema import check


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    """An MCP server with one tool, ``double(window)`` (the fake engine's calls pass a
    ``window``)."""
    server = MCPServer("calc")

    @server.tool()
    def double(window: int) -> int:
        """Twice the number."""
        return 2 * window

    @server.tool()
    def hidden() -> str:
        """Not in allowed_tools."""
        return "no"

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(server.streamable_http_app(), log_level="warning"))
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    web.should_exit = True
    thread.join(10)
    sock.close()


def runtime(*allowed: str, **engine: Any) -> Runtime:
    rt = fake_runtime(tokens=2, **engine)
    rt.config.server.mcp_servers = list(allowed)
    rt.config.server.fetch_allow_hosts = ["127.0.0.1"]
    return rt


def mcp_tool(url: str, **more: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "calc", "server_url": url,
            "require_approval": "never", **more}


async def update(client: Client, **session: Any) -> list[dict[str, Any]]:
    await client.send({"type": "session.update", "session": {"type": "realtime", **session}})
    return await client.until("session.updated")


async def test_mcp_tools_are_listed_and_a_forced_call_runs_on_the_server(mcp_url: str) -> None:
    async with running(runtime("http://127.0.0.1:", tool_call="double")) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=fake")
        got = await update(client, tools=[mcp_tool(mcp_url, allowed_tools=["double"])])
        kinds = [e["type"] for e in got]
        assert kinds.index("mcp_list_tools.in_progress") < kinds.index(
            "mcp_list_tools.completed")
        (listed,) = [e["item"] for e in got if e["type"] == "conversation.item.done"]
        assert listed["type"] == "mcp_list_tools" and listed["server_label"] == "calc"
        assert [t["name"] for t in listed["tools"]] == ["double"]
        assert got[-1]["session"]["tools"][0]["server_url"] == mcp_url
        await client.send(image_event(data_url(jpeg_bytes("x")), text="double it"))
        await client.send({"type": "response.create"})  # the fake model calls double
        done = (await client.until("response.done", timeout=60))[-1]["response"]
        ran = [item for item in done["output"] if item["type"] == "mcp_call"]
        assert ran[0]["name"] == "double" and ran[0]["server_label"] == "calc"
        window = int(ran[0]["arguments"].split(":")[1].rstrip("}"))
        assert ran[0]["output"] == str(2 * window) and "error" not in ran[0]
        await client.close()
        check(client.seen, beta=False)


async def test_a_server_outside_the_allow_list_is_refused(mcp_url: str) -> None:
    async with running(runtime("http://127.0.0.1:1/")) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=fake")
        await client.send({"type": "session.update", "session": {"tools": [mcp_tool(mcp_url)]}})
        error = await client.error()
        assert mcp_url in error["message"] and "server.mcp_servers" in error["message"]
        await client.send({"type": "session.update", "session": {"tools": [
            mcp_tool(mcp_url, require_approval="always")]}})
        assert (await client.error())["param"] == "session.tools.0.require_approval"
        await client.close()


async def test_a_private_address_needs_fetch_allow_hosts(mcp_url: str) -> None:
    rt = runtime("http://127.0.0.1:")
    rt.config.server.fetch_allow_hosts = []
    async with running(rt) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=fake")
        await client.send({"type": "session.update", "session": {"tools": [mcp_tool(mcp_url)]}})
        error = await client.error()
        assert mcp_url in error["message"] and "private" in error["message"]
        await client.close()


async def test_mcp_is_off_by_default(mcp_url: str) -> None:
    async with running(fake_runtime()) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=fake")
        await client.send({"type": "session.update", "session": {"tools": [mcp_tool(mcp_url)]}})
        error = await client.error()
        assert "server.mcp_servers" in error["message"] and error["param"] == "session.tools"
        await client.close()


async def test_an_mcp_tool_without_a_url_is_an_error_naming_it() -> None:
    async with running(runtime("http://127.0.0.1:")) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=fake")
        await client.send({"type": "session.update", "session": {"tools": [
            {"type": "mcp", "server_label": "files"}]}})
        error = await client.error()
        assert error["param"] == "session.tools.0" and "files" in error["message"]
        await client.close()
