"""Tool calls in a model's output: each format parsed whole, in every split into two pieces and
one character at a time (the same answer each way); malformed calls kept as text; the schema
that enforces a ``tool_choice``; and the wrapper around an engine's stream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agent.engine import ModelRequest, Tool
from agent.errors import InvalidRequest
from agent.parts import AudioChunk, Part, TextDelta, ToolCallDelta, Usage
from agent.toolcalls import ENFORCED, CallParser
from agent.toolstream import forced_schema, prepare, tool_parts

WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"enum": ["c", "f"]}},
           "required": ["city"]}
TOOLS = (Tool("get_weather", "The weather in a city", WEATHER),
         Tool("get_time", "The time in a zone",
              {"type": "object", "properties": {"zone": {"type": "string"}}}))
NAMES = [tool.name for tool in TOOLS]

Segment = tuple[Any, ...]


def segments(parts: list[Part]) -> list[Segment]:
    """Parts as ``("text", text)`` and ``("call", index, name, arguments)``, pieces joined;
    checks that a call opens with its id and name and then only adds arguments."""
    out: list[Segment] = []
    for part in parts:
        if isinstance(part, TextDelta):
            assert part.text
            if out and out[-1][0] == "text":
                out[-1] = ("text", out[-1][1] + part.text)
            else:
                out.append(("text", part.text))
        elif isinstance(part, ToolCallDelta) and part.call_id:
            assert part.call_id.startswith("call_") and part.name
            out.append(("call", part.index, part.name, part.arguments))
        else:
            assert isinstance(part, ToolCallDelta) and not part.name
            kind, index, name, arguments = out[-1]
            assert kind == "call" and index == part.index
            out[-1] = ("call", index, name, arguments + part.arguments)
    return out


def parse(fmt: str, pieces: list[str], parallel: bool = True) -> tuple[list[Segment], list[str]]:
    parser = CallParser(fmt, NAMES, parallel)
    parts = [part for piece in pieces for part in parser.feed(piece)] + parser.finish()
    return segments(parts), parser.problems


def every_split(text: str) -> Iterator[list[str]]:
    yield [text]
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]
    yield list(text)


def weather(index: int = 0, args: str = '{"city":"Paris"}') -> Segment:
    return ("call", index, "get_weather", args)


def time(index: int = 1, args: str = '{"zone":"CET"}') -> Segment:
    return ("call", index, "get_time", args)


HERMES_TWO = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
              '{"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", '
              '"arguments": {"zone": "CET"}}\n</tool_call>\nDone.')
LLAMA_TWO = ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
             '{"name": "get_time", "arguments": {"zone": "CET"}}')
MISTRAL_TWO = ('Sure. [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
               '[TOOL_CALLS]get_time[ARGS]{"zone": "CET"}')

CASES: list[tuple[str, str, list[Segment]]] = [
    ("hermes", HERMES_TWO, [("text", "Let me check."), weather(), time(), ("text", "Done.")]),
    ("hermes", "a < b, and <tool> is text", [("text", "a < b, and <tool> is text")]),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich", '
     '"unit": "c"}}', [weather(0, '{"city":"Zürich","unit":"c"}')]),
    ("hermes", '<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}'
     "</tool_call>", [time(0)]),
    ("llama3_json", LLAMA_TWO, [weather(), time()]),
    ("llama3_json", '\n {"name": "get_weather", "parameters": {"city": "Paris"}}\nAnything '
     "else?", [weather(), ("text", "Anything else?")]),
    ("llama3_json", "The weather in Paris is sunny.", [("text", "The weather in Paris is "
                                                        "sunny.")]),
    ("llama3_json", "<b>bold</b>", [("text", "<b>bold</b>")]),
    ("mistral", MISTRAL_TWO, [("text", "Sure."), weather(), time()]),
    ("mistral", 'Sure. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
     '{"name": "get_time", "arguments": {"zone": "CET"}}] ok', [("text", "Sure."), weather(),
                                                                time(), ("text", "ok")]),
    ("mistral", '[TOOL_CALLS]get_time{"zone": "CET"} and [1]', [time(0), ("text", "and [1]")]),
    (ENFORCED, ' [{"name": "get_weather", "arguments": {"city": "Paris"}}]', [weather()]),
]


@pytest.mark.parametrize(("fmt", "text", "expected"), CASES)
def test_calls_are_found_the_same_in_every_split(fmt: str, text: str,
                                                 expected: list[Segment]) -> None:
    for pieces in every_split(text):
        assert parse(fmt, pieces) == (expected, []), pieces


MALFORMED = [
    ("hermes", 'Hi <tool_call>{"name": "get_weather", "arguments": {city: 1}}</tool_call> bye',
     "invalid JSON"),
    ("hermes", '<tool_call>{"name": "get_wether", "arguments": {}}</tool_call>',
     "unknown tool 'get_wether'"),
    ("hermes", '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>',
     "not a JSON object"),
    ("hermes", 'Checking <tool_call>{"name": "get_wea', "invalid JSON"),
    ("llama3_json", '{"answer": 42}', "not a call"),
    ("llama3_json", '<|python_tag|>{"name": "get_time", "parameters": {"zone"', "unfinished"),
    ("llama3_json", "<|python_tag|>print(1)", "no JSON call"),
    ("mistral", "Well [TOOL_CALLS]nosuch[ARGS]{}", "unknown tool 'nosuch'"),
    ("mistral", '[TOOL_CALLS]get_time[ARGS]"CET" and more', "not a JSON object"),
    ("mistral", '[TOOL_CALLS]get_time[ARGS]{"zone": "CET"', "unfinished"),
    ("mistral", "[TOOL_CALLS][{]}", "invalid JSON"),
    (ENFORCED, "no JSON here", "not a JSON array"),
]


@pytest.mark.parametrize(("fmt", "text", "problem"), MALFORMED)
def test_a_malformed_call_stays_text_and_is_reported(fmt: str, text: str, problem: str) -> None:
    reports = set()
    for pieces in every_split(text):
        got, problems = parse(fmt, pieces)
        assert got == [("text", text)], pieces
        assert len(problems) == 1 and problem in problems[0]
        reports.add(problems[0])
    assert len(reports) == 1


def test_a_bad_call_in_an_array_stays_text_beside_the_good_one() -> None:
    text = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "nosuch", "arguments": {}}]')
    for pieces in every_split(text):
        got, problems = parse("mistral", pieces)
        assert got == [weather(), ("text", '{"name": "nosuch", "arguments": {}}')]
        assert len(problems) == 1 and "nosuch" in problems[0]


def _format(text: str) -> str:
    return {HERMES_TWO: "hermes", LLAMA_TWO: "llama3_json", MISTRAL_TWO: "mistral"}[text]


@pytest.mark.parametrize("text", [HERMES_TWO, LLAMA_TWO, MISTRAL_TWO])
def test_a_cut_off_output_loses_no_text(text: str) -> None:
    """Every prefix of an output parses without raising; with no call found, all its text
    comes back."""
    for end in range(len(text) + 1):
        got, _ = parse(_format(text), [text[:end]])
        calls = [segment for segment in got if segment[0] == "call"]
        if not calls:
            assert "".join(segment[1] for segment in got) == text[:end]


@pytest.mark.parametrize("text", [HERMES_TWO, LLAMA_TWO, MISTRAL_TWO])
def test_parallel_off_keeps_the_first_call(text: str) -> None:
    for pieces in every_split(text):
        got, problems = parse(_format(text), pieces, parallel=False)
        assert [segment for segment in got if segment[0] == "call"] == [weather()]
        assert len(problems) == 1 and "'get_time'" in problems[0]


def test_text_is_held_back_only_while_undecided() -> None:
    hermes = CallParser("hermes", NAMES)
    assert hermes.feed("The answer is 4") == [TextDelta("The answer is 4")]
    assert hermes.feed("2 <tool_c") == [TextDelta("2")]
    assert hermes.feed("ool> is a tag") == [TextDelta(" <tool_cool> is a tag")]
    llama = CallParser("llama3_json", NAMES)
    assert llama.feed("  {") == []
    assert CallParser("llama3_json", NAMES).feed("The") == [TextDelta("The")]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="pythonic"):
        CallParser("pythonic", NAMES)


# The schema that enforces a choice.

CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
OTHER = {"name": "get_time", "arguments": {"zone": "CET"}}


def test_the_required_schema_takes_calls_and_refuses_the_rest() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    one = forced_schema(TOOLS, "required", parallel=False)
    many = forced_schema(TOOLS, "required", parallel=True)
    assert one is not None and many is not None
    jsonschema.Draft202012Validator.check_schema(one)
    assert jsonschema.Draft202012Validator(one).is_valid([CALL])
    assert jsonschema.Draft202012Validator(many).is_valid([CALL, OTHER])
    for wrong in ([], [CALL, OTHER], [{"name": "nosuch", "arguments": {}}],
                  [{"name": "get_weather", "arguments": {}}], [{"name": "get_weather"}],
                  [{**CALL, "extra": 1}], CALL):
        assert not jsonschema.Draft202012Validator(one).is_valid(wrong), wrong


def test_a_named_choice_is_its_tools_arguments() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = forced_schema(TOOLS, "get_weather", parallel=True)
    assert schema == WEATHER
    assert jsonschema.Draft202012Validator(schema).is_valid({"city": "Paris", "unit": "c"})
    assert not jsonschema.Draft202012Validator(schema).is_valid({"city": 3})
    assert forced_schema((Tool("ping", parameters={"properties": {}}),), "ping", True) == {
        "type": "object", "properties": {}}


def test_xgrammar_enforces_the_required_schema() -> None:
    xgr = pytest.importorskip("xgrammar")
    schema = forced_schema(TOOLS, "required", parallel=False)
    compiled = xgr.GrammarCompiler(xgr.TokenizerInfo(["a"])).compile_json_schema(
        json.dumps(schema))

    def accepts(value: object) -> bool:
        matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        return bool(matcher.accept_string(json.dumps(value)) and matcher.is_terminated())

    assert accepts([CALL])
    assert not accepts([{**CALL, "name": "get_wether"}])
    assert not accepts([CALL, OTHER])


def test_choices_that_enforce_nothing_have_no_schema() -> None:
    assert forced_schema(TOOLS, "auto", True) is None
    assert forced_schema(TOOLS, "none", False) is None


def test_an_unknown_or_impossible_choice_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="'get_wether'.*'get_weather', 'get_time'") as info:
        forced_schema(TOOLS, "get_wether", True)
    assert info.value.param == "tool_choice"
    with pytest.raises(InvalidRequest, match="needs tools") as info:
        forced_schema((), "required", True)
    assert info.value.param == "tool_choice"


# prepare: the request an engine gets.

def test_prepare_sets_the_schema_of_an_enforced_choice() -> None:
    auto = ModelRequest(tools=TOOLS)
    assert prepare(auto, constrains=False, model="tiny") is auto
    assert prepare(ModelRequest(tool_choice="none"), False, "tiny").output_schema is None
    named = prepare(ModelRequest(tools=TOOLS, tool_choice="get_time"), True, "tiny")
    assert named.output_schema == forced_schema(TOOLS, "get_time", True)
    required = prepare(ModelRequest(tools=TOOLS, tool_choice="required",
                                    parallel_tool_calls=False), True, "tiny")
    assert required.output_schema == forced_schema(TOOLS, "required", False)


@pytest.mark.parametrize(("request_", "match"), [
    (ModelRequest(tools=TOOLS, tool_choice="required"), "model 'tiny' cannot enforce"),
    (ModelRequest(tools=TOOLS, tool_choice="get_time"), "model 'tiny' cannot enforce"),
    (ModelRequest(tools=TOOLS, tool_choice="nosuch"), "'nosuch' is not one of"),
    (ModelRequest(tool_choice="required"), "needs tools"),
    (ModelRequest(tool_choice="get_time"), "is not one of the request's tools"),
])
def test_prepare_refuses_what_cannot_be_met(request_: ModelRequest, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match) as info:
        prepare(request_, constrains=False, model="tiny")
    assert info.value.param == "tool_choice"


# tool_parts: the wrapper around an engine's stream.

async def run(request: ModelRequest, fmt: str | None, *parts: Part) -> list[Part]:
    async def engine() -> AsyncIterator[Part]:
        for part in parts:
            yield part

    return [part async for part in tool_parts(engine(), request, fmt)]


STOP = Usage(prompt_tokens=10, completion_tokens=5, finish_reason="stop")


async def test_auto_finds_calls_and_passes_other_parts_in_order() -> None:
    audio = AudioChunk(b"\0\0", 16000)
    out = await run(ModelRequest(tools=TOOLS), "hermes", TextDelta("Checking. <tool_"),
                    audio, TextDelta('call>{"name": "get_time", "arguments": {"zone": "CET"}}'
                                     "</tool_call>"), STOP)
    assert out[0] == TextDelta("Checking.") and out[1] == audio
    assert segments(out[2:-1]) == [time(0)]
    assert out[-1] == Usage(10, 5, finish_reason="tool_calls")


async def test_an_answer_without_calls_keeps_its_finish_reason() -> None:
    text = TextDelta("Sunny.")
    assert await run(ModelRequest(tools=TOOLS), "hermes", text, STOP) == [text, STOP]
    cut = Usage(finish_reason="length")
    out = await run(ModelRequest(tools=TOOLS), "hermes",
                    TextDelta('<tool_call>{"name": "get_time", "arguments": {}}'), cut)
    assert segments(out[:-1]) == [time(0, "{}")] and out[-1] == cut


async def test_required_turns_the_enforced_array_into_calls() -> None:
    request = ModelRequest(tools=TOOLS, tool_choice="required")
    out = await run(request, None, TextDelta('[{"name": "get_weather", '),
                    TextDelta('"arguments": {"city": "Paris"}}, {"name": "get_time", '),
                    TextDelta('"arguments": {"zone": "CET"}}]'), STOP)
    assert segments(out[:-1]) == [weather(), time()]
    assert out[-1].finish_reason == "tool_calls"  # type: ignore[union-attr]


async def test_a_named_choice_streams_its_arguments_compacted() -> None:
    request = ModelRequest(tools=TOOLS, tool_choice="get_weather")
    out = await run(request, "hermes", TextDelta('{ "city"'), TextDelta(': "New '),
                    TextDelta('York" }\n'), STOP)
    assert segments(out[:-1]) == [weather(0, '{"city":"New York"}')]
    assert [part.arguments for part in out[:-1] if isinstance(part, ToolCallDelta)] == [
        "", '{"city"', ':"New ', 'York"}']
    assert out[-1].finish_reason == "tool_calls"  # type: ignore[union-attr]


@pytest.mark.parametrize(("request_", "fmt"), [
    (ModelRequest(tools=TOOLS, tool_choice="none"), "hermes"),
    (ModelRequest(tools=TOOLS), None),
    (ModelRequest(), "hermes"),
])
async def test_no_tools_or_none_or_no_format_passes_everything_on(request_: ModelRequest,
                                                                  fmt: str | None) -> None:
    parts = [TextDelta('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'), STOP]
    assert await run(request_, fmt, *parts) == parts


async def test_problems_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.toolstream"):
        out = await run(ModelRequest(tools=TOOLS, session="s1"), "hermes",
                        TextDelta('<tool_call>{"name": "nosuch", "arguments": {}}</tool_call>'))
        await run(ModelRequest(tools=TOOLS, tool_choice="get_time"), None, TextDelta('{"zo'))
    assert segments(out) == [("text", '<tool_call>{"name": "nosuch", "arguments": {}}'
                                      "</tool_call>")]
    messages = [record.getMessage() for record in caplog.records]
    assert any("s1" in m and "unknown tool 'nosuch'" in m for m in messages)
    assert any("'get_time' has arguments that are not a JSON object" in m for m in messages)


def test_an_enforced_array_cut_by_the_token_limit_keeps_its_whole_calls() -> None:
    parser = CallParser(ENFORCED, ["get_weather"])
    out = parser.feed('[{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
                      '{"name": "get_weather", "arguments": {"ci')
    out += parser.finish()
    calls = [p for p in out if isinstance(p, ToolCallDelta)]
    assert [c.name for c in calls if c.name] == ["get_weather"]
    assert json.loads("".join(c.arguments for c in calls)) == {"city": "Oslo"}
    assert not [p for p in out if isinstance(p, TextDelta)]
    assert "1 whole call(s) kept" in parser.problems[0]


async def test_a_model_that_takes_no_tools_answers_a_forced_choice_as_without_them() -> None:
    """The embedded models (no tool format, no constrained decoding) answer as they would
    without the functions, whatever the choice (a session forcing a call still reads text)."""
    from agent.config import ModelConfig
    from agent.pool import LocalPool
    from agent.testing import FakeEngine

    pool = LocalPool({"fake": FakeEngine("fake", ModelConfig(engine="fake",
                                                                 options={"tokens": 2}))})
    await pool.start()
    request = ModelRequest(prompt="x", tools=(Tool("get_weather"),), tool_choice="get_weather")
    parts = [p async for p in pool.stream("fake", request)]
    await pool.close()
    assert "".join(p.text for p in parts if isinstance(p, TextDelta)) == "tok0 tok1 "
