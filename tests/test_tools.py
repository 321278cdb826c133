"""Function calling end to end, on a tiny random-weight Qwen3-VL with its published chat
template (tools included) on the transformers engine: an enforced tool_choice makes valid
calls whatever the weights say, the client's result goes back into the conversation, and the
answer goes on from it. Through the raw realtime wire, the OpenAI Agents SDK's tool loop, the
openai SDK's chat completions and the google-genai live client, all unmodified."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import openai
import pytest
import websockets
from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner

from agent.config import Config, GenerationConfig, ModelConfig
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import ServerThread, data_url, image_event, jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import Address
from tests.helpers import Client

pytestmark = pytest.mark.slow
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}
CLOCK = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
         "required": ["zone"], "additionalProperties": False}
TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather forecast",
          "parameters": WEATHER},
         {"type": "function", "name": "get_time", "description": "The time in a zone",
          "parameters": CLOCK}]
PICTURE = data_url(jpeg_bytes("rain", size=(96, 64)))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Address, Runtime]]:
    source = build("qwen3-vl", tmp_path_factory.mktemp("qwen3vl"))
    model = ModelConfig(engine="transformers", family="qwen3-vl", source=str(source),
                        handlers=["describe"],
                        generation=GenerationConfig(max_new_tokens=48, min_new_tokens=4))
    runtime = Runtime.build(Config(models={"tiny": model}), get_plugin_manager())
    with ServerThread(runtime) as address:
        yield address, runtime


async def configure(client: Client, **session: Any) -> dict[str, Any]:
    await client.send({"type": "session.update", "session": {"type": "realtime", **session}})
    return (await client.until("session.updated"))[-1]["session"]


async def ask(client: Client, text: str, **response: Any) -> list[dict[str, Any]]:
    await client.send(image_event(PICTURE, text=text))
    await client.send({"type": "response.create", "response": response})
    return await client.until("response.done", timeout=120)


def calls(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = events[-1]["response"]
    return [item for item in done["output"] if item["type"] == "function_call"]


async def test_a_named_function_is_called_with_valid_arguments_and_the_answer_goes_on(
        served: tuple[Address, Runtime]) -> None:
    address, _ = served
    client = await Client.connect(f"{address.ws}/v1/realtime?model=tiny")
    await configure(client, tools=TOOLS,
                    tool_choice={"type": "function", "name": "get_weather"})
    got = await ask(client, "What will the weather be?")
    kinds = [e["type"] for e in got]
    (call,) = calls(got)
    assert call["name"] == "get_weather" and call["status"] == "completed"
    jsonschema.validate(json.loads(call["arguments"]), WEATHER)
    # the call is its own item, its arguments streamed then done; no empty message item
    assert "response.output_text.delta" not in kinds
    deltas = "".join(e["delta"] for e in got
                     if e["type"] == "response.function_call_arguments.delta")
    assert deltas == call["arguments"]
    assert kinds.index("response.function_call_arguments.done") < kinds.index("response.done")
    first_prompt = got[-1]["response"]["usage"]["input_tokens"]

    output = json.dumps({"forecast": "rain all week"})
    await client.send({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": call["call_id"], "output": output}})
    added = await client.until("conversation.item.done")
    assert added[-1]["item"]["type"] == "function_call_output"
    await client.send({"type": "response.create"})
    answer = await client.until("response.done", timeout=120)
    done = answer[-1]["response"]
    # going on from a function's output, the session's forced choice is not held: an answer
    assert done["status"] in ("completed", "incomplete") and not calls(answer)
    assert done["output"][0]["type"] == "message" and done["output"][0]["content"][0]["text"]
    # the call and its output are in the model's prompt now
    assert done["usage"]["input_tokens"] > first_prompt + len(output) // 8
    await client.close()


async def test_required_calls_one_of_the_functions(served: tuple[Address, Runtime]) -> None:
    address, _ = served
    client = await Client.connect(f"{address.ws}/v1/realtime?model=tiny")
    got = await ask(client, "What now?", tools=TOOLS, tool_choice="required",
                    parallel_tool_calls=False)
    (call,) = calls(got)
    schema = {"get_weather": WEATHER, "get_time": CLOCK}[call["name"]]
    jsonschema.validate(json.loads(call["arguments"]), schema)
    await client.close()


async def test_bad_tool_requests_are_errors_that_name_the_field(
        served: tuple[Address, Runtime]) -> None:
    address, _ = served
    client = await Client.connect(f"{address.ws}/v1/realtime?model=tiny")
    cases = [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "fly"}},
         "session.tool_choice", "fly"),
        ({"tools": [], "tool_choice": "required"}, "session.tool_choice", "required"),
        ({"tools": [{"type": "mcp", "server_label": "files"}]}, "session.tools.0", "files"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "session.tools", "get_weather"),
    ]
    for session, param, named in cases:
        await client.send({"type": "session.update", "session": session})
        error = (await client.until("error"))[-1]["error"]
        assert error["param"] == param and named in error["message"], error
    assert (await configure(client, tools=TOOLS))["tools"][0]["name"] == "get_weather"
    await client.close()


async def test_the_agents_sdk_runs_a_whole_tool_loop(served: tuple[Address, Runtime]) -> None:
    """RealtimeAgent with a function tool: the call, the SDK's function output, the answer."""
    address, _ = served
    seen: list[tuple[str, int]] = []

    @function_tool
    def get_weather(city: Literal["Paris", "Oslo", "Lima"], days: Literal[1, 2, 3]) -> str:
        """The weather forecast for a city (closed choices: a random-weight model given a free
        string writes until its token limit)."""
        seen.append((city, days))
        return f"rain in {city} for {days} days"

    agent = RealtimeAgent(name="forecaster", instructions="Use the tools.", tools=[get_weather])
    runner = RealtimeRunner(agent, config={"model_settings": {
        "output_modalities": ["text"], "tool_choice": "required"}})
    session = await runner.run(model_config={
        "url": f"{address.ws}/v1/realtime?model=tiny", "api_key": "any"})
    errors: list[Any] = []
    kinds: list[str] = []
    async with session:
        await session.send_message({"type": "message", "role": "user", "content": [
            {"type": "input_image", "image_url": PICTURE},
            {"type": "input_text", "text": "Weather?"}]})

        async def until_answered() -> None:
            async for event in session:
                kinds.append(event.type)
                if event.type == "error" or (event.type == "raw_model_event" and
                                             event.data.type in ("error", "exception")):
                    errors.append(event)
                answered = any(getattr(item, "role", "") == "assistant"
                               for item in session._history)
                if event.type == "agent_end" and answered and ("tool_end" in kinds
                                                               or kinds.count("agent_end") > 1):
                    return  # the answer after the tool's output: its agent_end can come
                    # after the tool call's own, which follows tool_end

        await asyncio.wait_for(until_answered(), 180)
        history = list(session._history)
    assert errors == []
    assert len(seen) == 1 and seen[0][0] in ("Paris", "Oslo", "Lima") and seen[0][1] in (1, 2, 3)
    assert kinds.index("tool_start") < kinds.index("tool_end")
    assert any(getattr(item, "type", "") == "function_call" for item in history)
    assert [item for item in history if getattr(item, "role", "") == "assistant"]


async def test_chat_completions_call_then_answer(served: tuple[Address, Runtime]) -> None:
    address, _ = served
    tools: Any = [{"type": "function", "function": {k: t[k] for k in
                                                    ("name", "description", "parameters")}}
                  for t in TOOLS]
    question: Any = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": PICTURE}},
        {"type": "text", "text": "Weather?"}]}
    async with openai.AsyncOpenAI(base_url=f"{address.http}/v1", api_key="any") as client:
        first = await client.chat.completions.create(
            model="tiny", messages=[question], tools=tools,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        pieces = []
        stream = await client.chat.completions.create(
            model="tiny", stream=True, tools=tools, tool_choice="auto", messages=[
                question, choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "rain"}])
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0])
    assert "".join(p.delta.content or "" for p in pieces)
    assert pieces[-1].finish_reason in ("stop", "length")


async def test_gemini_live_function_call_and_response(served: tuple[Address, Runtime]) -> None:
    """The whole loop on the Gemini wire: ``toolConfig`` as generateContent takes it forces the
    call (google-genai's live config has no tool_config), ``toolResponse`` answers it."""
    address, _ = served
    url = f"{address.ws}/ws/google.ai.generativelanguage.v1beta.GenerativeService." \
          "BidiGenerateContent"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/tiny", "tools": [
            {"functionDeclarations": [{"name": "get_weather", "description": "The forecast",
                                       "parametersJsonSchema": WEATHER}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}}))
        assert "setupComplete" in json.loads(await ws.recv())
        await ws.send(json.dumps({"realtimeInput": {"video": {
            "mimeType": "image/jpeg", "data": PICTURE.split(",", 1)[1]}}}))
        await ws.send(json.dumps({"clientContent": {"turns": [
            {"role": "user", "parts": [{"text": "Weather?"}]}], "turnComplete": True}}))
        call = await gemini_until(ws, "toolCall")
        (fn,) = call["toolCall"]["functionCalls"]
        assert fn["name"] == "get_weather" and fn["id"]
        jsonschema.validate(fn["args"], WEATHER)
        await gemini_until(ws, "serverContent")  # the turn of the call ends
        await ws.send(json.dumps({"toolResponse": {"functionResponses": [
            {"id": fn["id"], "name": "get_weather", "response": {"forecast": "rain"}}]}}))
        text = []
        while True:
            message = await gemini_until(ws, "serverContent")
            content = message["serverContent"]
            text += [p["text"] for p in content.get("modelTurn", {}).get("parts", [])]
            if content.get("turnComplete"):
                break
    assert "".join(text)


async def gemini_until(ws: Any, key: str) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if key in message:
            return dict(message)


def test_tool_turns_reach_the_template(tmp_path: Path) -> None:
    """The published template renders the offered functions, the model's call and its output
    (what the continuation above relies on)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(build("qwen3-vl", tmp_path))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
         {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
          "function": {"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "rain"}],
        tools=[{"type": "function", "function": {k: TOOLS[0][k] for k in
                                                 ("name", "description", "parameters")}}],
        tokenize=False, add_generation_prompt=True)
    assert "get_weather" in text and "<tool_call>" in text and "<tool_response>" in text
    assert "rain" in text and '"city": "Oslo"' in text


async def test_the_server_runs_its_own_tools_and_the_answer_goes_on_from_them(
        served: tuple[Address, Runtime]) -> None:
    """``read_text`` (the embedded OCR) called as the session forces: the client sees it as an
    MCP call the server ran, with its output, and the model's answer follows in the same
    response; the call and its output join the conversation."""
    address, _ = served
    client = await Client.connect(f"{address.ws}/v1/realtime?model=tiny")
    session = await configure(client, tool_choice="read_text",
                              streamagent={"server_tools": ["look", "read_text"]})
    assert session["streamagent"]["server_tools"] == ["look", "read_text"]
    await client.send(image_event(data_url(jpeg_bytes("EXIT", size=(320, 120))),
                                  text="What does the sign say?"))
    await client.send({"type": "response.create"})
    got = await client.until("response.done", timeout=120)
    kinds = [e["type"] for e in got]
    done = got[-1]["response"]
    (ran,) = [item for item in done["output"] if item["type"] == "mcp_call"]
    assert ran["name"] == "read_text" and ran["server_label"] == "streamagent"
    assert "EXIT" in ran["output"] and "error" not in ran
    assert kinds.index("response.mcp_call.completed") < kinds.index("response.output_text.delta")
    assert [item["type"] for item in done["output"]] == ["message", "mcp_call"]
    assert done["output"][0]["content"][0]["text"]  # the model went on from the output
    assert not calls(got)  # nothing for the client to run
    await client.close()


async def test_server_tool_names_are_checked(served: tuple[Address, Runtime]) -> None:
    address, _ = served
    client = await Client.connect(f"{address.ws}/v1/realtime?model=tiny")
    await client.send({"type": "session.update", "session": {
        "streamagent": {"server_tools": ["look", "teleport"]}}})
    error = (await client.until("error"))[-1]["error"]
    assert error["param"] == "session.streamagent.server_tools" and "teleport" in error["message"]
    assert "read_text" in error["message"]  # the tools there are
    await client.send({"type": "session.update", "session": {
        "tools": [{"type": "function", "name": "look"}],
        "streamagent": {"server_tools": ["look"]}}})
    error = (await client.until("error"))[-1]["error"]
    assert "same name" in error["message"]
    await client.close()


async def test_gemini_user_activity_cancels_calls_not_answered(
        served: tuple[Address, Runtime]) -> None:
    """A toolCall the client has not answered is cancelled (``toolCallCancellation``) when the
    user speaks or types first, as Gemini Live does."""
    address, _ = served
    url = f"{address.ws}/ws/google.ai.generativelanguage.v1beta.GenerativeService." \
          "BidiGenerateContent"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/tiny", "tools": [
            {"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": WEATHER}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}}))
        await ws.recv()
        await ws.send(json.dumps({"realtimeInput": {"video": {
            "mimeType": "image/jpeg", "data": PICTURE.split(",", 1)[1]}}}))
        await ws.send(json.dumps({"clientContent": {"turns": [
            {"role": "user", "parts": [{"text": "Weather?"}]}], "turnComplete": True}}))
        (fn,) = (await gemini_until(ws, "toolCall"))["toolCall"]["functionCalls"]
        await gemini_until(ws, "serverContent")
        await ws.send(json.dumps({"realtimeInput": {"text": "never mind"}}))
        cancelled = await gemini_until(ws, "toolCallCancellation")
        assert cancelled["toolCallCancellation"]["ids"] == [fn["id"]]
