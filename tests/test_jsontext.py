"""Server events' JSON text: echoed client strings are copied in, and the text is the same as
``json.dumps``'s, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets

from agent.protocols.jsontext import Verbatim, dumps, echoed, plain
from agent.testing import data_url, fake_runtime, jpeg_bytes
from agent.uvicorn_server import running

HOLE = "\x00streamagent.verbatim"


def test_plain_text_is_ascii_without_escapes() -> None:
    assert plain('{"a": "data:image/jpeg;base64,/9j/4AAQ+=="}')
    assert not plain('{"a": "caf\\u00e9"}')
    assert not plain('{"a": "café"}')
    assert not plain('{"a": "\x7f"}')


def event(marked: bool, other: object = "line\n\"quoted\" \u00e9") -> dict[str, Any]:
    url = "data:image/jpeg;base64,/9j/4AAQ+=="
    return {"type": "x", "n": 1.5, "none": None, "t": (1, "é", echoed("b", marked)),
            "k": {3: True}, "other": other,
            "item": {"content": [{"image_url": echoed(url, marked), "text": echoed("a", marked)},
                                 {"text": "line\n\"quoted\" \u00e9"}]}}


def test_dumps_is_json_dumps_with_verbatim_strings() -> None:
    assert dumps(event(True)) == dumps(event(False)) == json.dumps(event(False))
    assert type(echoed("x", False)) is str and type(echoed("x", True)) is Verbatim


def test_a_string_that_is_the_hole_itself_falls_back() -> None:
    for other in (HOLE, f'x"{HOLE}', f"{HOLE}\"", [HOLE]):
        assert dumps(event(True, other)) == json.dumps(event(False, other))


def test_anything_else_is_refused_as_json_dumps_refuses_it() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"a": echoed("x", True), "b": object()})


async def test_item_echo_is_the_text_json_dumps_writes() -> None:
    """Plain messages (copied in) and messages with escapes (scanned) alike."""
    async with running(fake_runtime()) as address:
        async with websockets.connect(f"{address.ws}/v1/realtime?model=default") as ws:
            for text in ("plain", "caf\u00e9\n\"", HOLE):
                content = [{"type": "input_image", "image_url": data_url(jpeg_bytes("x"))},
                           {"type": "input_text", "text": text}]
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user", "content": content}}))
                for kind in ("conversation.item.added", "conversation.item.done"):
                    while (raw := await ws.recv()) and json.loads(raw)["type"] != kind:
                        pass
                    event = json.loads(raw)
                    assert raw == json.dumps(event) and event["item"]["content"] == content
