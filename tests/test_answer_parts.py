"""A model's non-text answer parts reach every protocol: a fake engine's function call becomes a
realtime ``function_call`` item (GA and beta), a Gemini ``toolCall`` and a chat ``tool_calls``,
each checked against the client library's own schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import websockets
from google.genai import types as genai_types

from agent.config import ModelConfig
from agent.engine import ModelRequest
from agent.handler import HandlerContext, ResponseOptions
from agent.parts import Part, TextDelta, ToolCallDelta, Usage
from agent.pool import LocalPool
from agent.protocols.realtime.responses import RealtimeSink
from agent.response import Response
from agent.testing import FakeEngine, ServerThread, fake_runtime
from agent.uvicorn_server import Address, running
from tests.helpers import Client
from tests.test_wire_schema import BETA_HEADERS, GEMINI_PATH, check, gemini_problems

CALL_EVENTS = ["response.output_item.added", "response.function_call_arguments.delta",
               "response.function_call_arguments.delta", "response.function_call_arguments.done",
               "response.output_item.done"]


async def realtime_call(address: Address, beta: bool) -> list[dict[str, Any]]:
    client = await Client.connect(f"{address.ws}/v1/realtime?model=default",
                                  additional_headers=BETA_HEADERS if beta else {})
    await client.send({"type": "response.create"})
    await client.until("response.done")
    await client.close()
    return client.seen


def assert_function_call(seen: list[dict[str, Any]]) -> None:
    """The message (the words) is output 0, the call output 1, in the order clients expect."""
    call_events = [e for e in seen if e["type"] in CALL_EVENTS and e.get("output_index") == 1]
    assert [e["type"] for e in call_events] == CALL_EVENTS
    added, done = call_events[0]["item"], call_events[-1]["item"]
    assert (added["type"], added["name"], added["arguments"]) == ("function_call", "alert", "")
    assert call_events[3]["arguments"] == done["arguments"] == '{"window": 1}'
    assert call_events[3]["call_id"] == done["call_id"] == added["call_id"] == "call_1"
    response = seen[-1]["response"]
    assert response["status"] == "completed"
    assert [o["type"] for o in response["output"]] == ["message", "function_call"]
    assert response["usage"]["output_tokens"] == 2


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
async def test_a_function_call_is_a_realtime_function_call_item(beta: bool) -> None:
    async with running(fake_runtime(tokens=2, tool_call="alert")) as address:
        seen = await realtime_call(address, beta)
    check(seen, beta)
    assert_function_call(seen)


async def test_a_live_response_of_only_a_call_has_no_empty_message() -> None:
    sent: list[dict[str, Any]] = []

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    async def parts() -> AsyncIterator[Part]:
        yield ToolCallDelta(0, "call_a", "alert", '{"x": ')
        yield ToolCallDelta(1, "call_b", "note", "{}")
        yield ToolCallDelta(0, arguments="1}")
        yield Usage(prompt_tokens=3, completion_tokens=4)

    await Response(RealtimeSink(send), {}).run(parts(), eager=False)
    output = sent[-1]["response"]["output"]
    assert [(o["type"], o["call_id"], o["arguments"]) for o in output] == [
        ("function_call", "call_a", '{"x": 1}'), ("function_call", "call_b", "{}")]
    assert {e["type"] for e in sent}.isdisjoint({"response.content_part.added",
                                                  "response.output_text.done"})
    assert sent[-1]["response"]["usage"]["output_tokens"] == 4
    check(sent, beta=False)


async def test_a_function_call_is_a_gemini_tool_call() -> None:
    async with running(fake_runtime(tokens=2, tool_call="alert")) as address:
        ws = await websockets.connect(f"{address.ws}{GEMINI_PATH}")
        await ws.send(json.dumps({"setup": {"model": "models/default"}}))
        got = [str(await ws.recv())]
        await ws.send(json.dumps({"clientContent": {"turns": [
            {"role": "user", "parts": [{"text": "what?"}]}], "turnComplete": True}}))
        while "turnComplete" not in got[-1]:
            got.append(str(await asyncio.wait_for(ws.recv(), 15)))
        await ws.close()
    assert not gemini_problems(got), "\n".join(gemini_problems(got))
    calls = [genai_types.LiveServerMessage.model_validate_json(m).tool_call for m in got]
    call = next(c for c in calls if c is not None).function_calls[0]  # type: ignore[index]
    assert (call.id, call.name, call.args) == ("call_1", "alert", {"window": 1})


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_function_call_is_a_chat_tool_call(stream: bool) -> None:
    with ServerThread(fake_runtime(tokens=2, tool_call="alert")) as address:
        client = openai.OpenAI(base_url=f"{address.http}/v1", api_key="any")
        messages: Any = [{"role": "user", "content": "hello"}]
        if stream:
            chunks = list(client.chat.completions.create(model="fake", messages=messages,
                                                         stream=True))
            pieces = [c.choices[0].delta.tool_calls for c in chunks
                      if c.choices and c.choices[0].delta.tool_calls]
            assert [p[0].function.name for p in pieces] == ["alert", None]  # type: ignore[union-attr]
            assert "".join(p[0].function.arguments for p in pieces) == '{"window": 1}'  # type: ignore[misc,union-attr]
            assert pieces[0][0].id == "call_1"
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
            return
        whole = client.chat.completions.create(model="fake", messages=messages)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "tok0 tok1 "
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, call.function.arguments) == (  # type: ignore[union-attr]
        "call_1", "alert", '{"window": 1}')


async def test_response_options_travel_with_the_request_not_in_ambient_state() -> None:
    """A question's cap and adapter reach the model call made for it; another handler's call
    made at the same time, with the session's options, is not affected."""
    engine = FakeEngine("fake", ModelConfig(engine="fake", options={
        "tokens": 9, "lora": {"x": "/adapters/x"}}))
    pool = LocalPool({"fake": engine})
    await pool.start()
    ctx = HandlerContext(pool, "fake")

    capped, free = await asyncio.gather(
        _text(ctx.stream(ModelRequest(prompt="a"), ResponseOptions(max_new_tokens=2,
                                                                    lora="x"))),
        _text(ctx.stream(ModelRequest(prompt="b"))))
    await pool.close()
    assert (capped, free.count("tok")) == ("x:tok0 x:tok1 ", 9)  # the adapter's words
    by_prompt = {r.prompt: r.options for r in engine.requests}
    assert by_prompt == {"a": {"max_new_tokens": 2, "lora": "x"}, "b": {}}


async def _text(parts: Any) -> str:
    return "".join([p.text async for p in parts if isinstance(p, TextDelta)])
