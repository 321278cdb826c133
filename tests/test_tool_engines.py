"""Tools and constrained decoding in the engines: tool turns and tools rendered by a real chat
template (Qwen3-VL's, tool branches included), and an ``output_schema`` enforced on a tiny
random-weight checkpoint, whose unconstrained output is gibberish. (vLLM's check runs on the
engine tests/test_vllm.py starts.)"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.config import GenerationConfig, ModelConfig
from agent.engine import ModelRequest, Tool, ToolCall, Turn
from agent.errors import ConfigError, InvalidRequest
from agent.families import messages
from agent.parts import TextDelta, Usage
from agent.tiny import build

TOKENS = 48
SCHEMAS = {
    "object": {"type": "object", "additionalProperties": False, "required": ["color", "count"],
               "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]},
                              "count": {"type": "integer", "minimum": 0, "maximum": 999}}},
    "array": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 4},
}
WEATHER = Tool("get_weather", "The weather in a city now.",
               {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]})
HISTORY = (Turn("user", "Weather in Paris and Rome?"),
           Turn("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
                                             ToolCall("call_2", "get_weather", "not json"))),
           Turn("tool", "sunny, 21 C", call_id="call_1"),
           Turn("tool", "rain", call_id="call_2"))


def follows(parts: list[Any], schema: dict[str, Any], limit: int = TOKENS) -> Any:
    """The answer's text as JSON, after checking it follows ``schema`` and ended by itself
    before ``limit`` tokens (the config's minimum, which must not hold under a schema)."""
    text = "".join(p.text for p in parts if isinstance(p, TextDelta))
    value = json.loads(text)
    jsonschema.validate(value, schema)
    usage = parts[-1]
    assert isinstance(usage, Usage) and usage.finish_reason == "stop", usage
    assert usage.completion_tokens is not None and usage.completion_tokens < limit
    return value


def test_tool_turns_take_the_shape_chat_templates_read() -> None:
    msgs = messages(ModelRequest(prompt="And Oslo?", history=HISTORY), [])
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool", "user"]
    assert msgs[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": "not json"}}]}
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
                       "content": "sunny, 21 C"}
    assert msgs[3]["tool_call_id"] == "call_2" and msgs[3]["content"] == "rain"


def test_a_family_chat_refuses_an_output_schema() -> None:
    from plugins.hf.engine import TransformersEngine

    engine = TransformersEngine("m", ModelConfig(engine="transformers", family="minicpm-v",
                                                 source="org/m", trust_remote_code=True))
    request = ModelRequest(prompt="?", output_schema=SCHEMAS["object"])
    with pytest.raises(InvalidRequest, match="own chat\\(\\), which cannot enforce"):
        next(iter(engine.generate(request, threading.Event())))
    assert engine.active == 0 and engine.tool_format is None


@pytest.fixture(scope="module")
def qwen3_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("qwen3-vl", tmp_path_factory.mktemp("qwen3vl"))


@pytest.fixture(scope="module")
def transformers_engine(qwen3_vl: Path) -> Iterator[Any]:
    """The tiny Qwen3-VL on transformers, told to write at least ``TOKENS`` tokens."""
    from plugins.hf.engine import TransformersEngine

    engine = TransformersEngine("tiny", ModelConfig(
        engine="transformers", source=str(qwen3_vl),
        generation=GenerationConfig(max_new_tokens=TOKENS, min_new_tokens=TOKENS)))
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


async def answer(engine: Any, request: ModelRequest) -> list[Any]:
    return [part async for part in engine.stream(request)]


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SCHEMAS))
async def test_output_follows_the_schema_on_transformers(transformers_engine: Any,
                                                         shape: str) -> None:
    parts = await answer(transformers_engine, ModelRequest(prompt="hi",
                                                           output_schema=SCHEMAS[shape]))
    follows(parts, SCHEMAS[shape])
    free = await answer(transformers_engine, ModelRequest(prompt="hi"))
    assert free[-1].completion_tokens == TOKENS  # the minimum holds without a schema
    with pytest.raises(json.JSONDecodeError):
        json.loads("".join(p.text for p in free if isinstance(p, TextDelta)))


@pytest.mark.slow
async def test_a_schema_the_grammar_cannot_take_is_refused(transformers_engine: Any) -> None:
    request = ModelRequest(prompt="hi", output_schema={"type": "integer", "minimum": 5,
                                                        "maximum": 1})
    with pytest.raises(InvalidRequest, match="cannot be enforced: Invalid range"):
        await answer(transformers_engine, request)


def rendered(prompt: str, *, tools_listed: bool) -> None:
    """Checks a Qwen3-VL prompt: the tools and their instructions, the calls and outputs."""
    assert ('{"type": "function", "function": {"name": "get_weather"' in prompt) is tools_listed
    assert ("# Tools\n\nYou may call one or more functions" in prompt) is tools_listed
    assert ("<tool_call>\n{\"name\": <function-name>" in prompt) is tools_listed
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", '
            '"arguments": not json}\n</tool_call><|im_end|>') in prompt
    assert ("<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response>\n"
            "<tool_response>\nrain\n</tool_response><|im_end|>") in prompt
    assert prompt.endswith("<|im_start|>user\nAnd Oslo?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_transformers_prompt_lists_tools_and_renders_tool_turns(transformers_engine: Any) -> None:
    from plugins.hf.inputs import processor_inputs

    engine = transformers_engine
    assert engine.tool_format == "hermes"
    for choice, listed in [("auto", True), ("get_weather", True), ("none", False)]:
        request = ModelRequest(prompt="And Oslo?", history=HISTORY, tools=(WEATHER,),
                               tool_choice=choice)
        inputs = processor_inputs(engine.processor, request, engine.family,
                                  engine.modalities, engine.max_pixels)
        rendered(engine.tokenizer.decode(inputs["input_ids"][0]), tools_listed=listed)


@pytest.mark.slow
def test_vllm_prompt_lists_tools_and_renders_tool_turns(qwen3_vl: Path) -> None:
    """vLLM's input path with the same template (its processor only: no engine starts)."""
    from transformers import AutoProcessor

    from plugins.vllm_engine import VllmEngine

    engine = VllmEngine("m", ModelConfig(engine="vllm", source=str(qwen3_vl)))
    engine.processor = AutoProcessor.from_pretrained(str(qwen3_vl))  # type: ignore[no-untyped-call]
    engine.modalities = frozenset({"image", "video"})
    for choice, listed in [("required", True), ("none", False)]:
        request = ModelRequest(prompt="And Oslo?", history=HISTORY, tools=(WEATHER,),
                               tool_choice=choice)
        rendered(engine.inputs(request)["prompt"], tools_listed=listed)


@pytest.mark.slow
def test_vllm_structured_outputs_are_compact_xgrammar_unless_configured() -> None:
    from plugins.vllm_engine import structured

    ours = structured("m", None)
    assert (ours.backend, ours.disable_any_whitespace) == ("xgrammar", True)
    assert structured("m", {"backend": "guidance"}).backend == "guidance"
    with pytest.raises(ConfigError, match="model 'm': bad structured_outputs_config"):
        structured("m", {"backend": "auto"})  # vLLM: no compact JSON under "auto"


def test_going_on_from_a_function_output_asks_nothing_new() -> None:
    """No prompt after a tool turn: the media join the question that led to the call, and the
    chat ends with the output (the model answers after it)."""
    call = ToolCall("c1", "get_weather", '{"city": "Oslo"}')
    request = ModelRequest(prompt="", history=(
        Turn("user", "Weather?"), Turn("assistant", "", tool_calls=(call,)),
        Turn("tool", "rain", call_id="c1")))
    chat = messages(request, [{"type": "image"}])
    assert [m["role"] for m in chat] == ["user", "assistant", "tool"]
    assert chat[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Weather?"}]
    asked = messages(replace(request, prompt="And tomorrow?"), [{"type": "image"}])
    assert asked[-1]["role"] == "user" and asked[-1]["content"][-1]["text"] == "And tomorrow?"
