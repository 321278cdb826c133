from __future__ import annotations

import json

import pytest

from agent.errors import InvalidRequest, UnknownEvent
from agent.protocols.realtime import wire as protocol


def parse(obj: object) -> protocol.ClientEvent:
    return protocol.parse_event(json.dumps(obj))


def test_every_event_type_parses() -> None:
    cases = [
        {"type": "session.update", "session": {"type": "realtime"}},
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
        {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.clear"},
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                      "content": [{"type": "input_text",
                                                                   "text": "hi"}]}},
        {"type": "conversation.item.delete", "item_id": "item_1"},
        {"type": "conversation.item.retrieve", "item_id": "item_1"},
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0,
         "audio_end_ms": 1500},
        {"type": "response.create"},
        {"type": "response.cancel", "response_id": "resp_1"},
    ]
    assert [parse(c).type for c in cases] == list(protocol.EVENT_TYPES)


def test_unknown_fields_are_ignored_and_extension_is_read() -> None:
    event = parse({"type": "session.update", "event_id": "e1", "session": {
        "type": "realtime", "tracing": None, "max_output_tokens": "inf", "voice": "alloy",
        "turn_detection": {"type": "semantic_vad"},
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "noise": 1}},
        "streamagent": {"live": True, "sample_fps": 2, "handlers": ["faces"], "x": 1}}})
    assert isinstance(event, protocol.SessionUpdate)
    assert event.event_id == "e1"
    assert event.session.streamagent is not None
    assert event.session.streamagent.sample_fps == 2
    assert event.session.audio and event.session.audio.input and event.session.audio.input.format
    assert event.session.audio.input.format.rate == 16000


def test_image_part_carries_media_timestamp() -> None:
    event = parse({"type": "conversation.item.create", "previous_item_id": "root", "item": {
        "id": "item_a", "type": "message", "role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/jpeg;base64,AA",
             "streamagent": {"timestamp": 1.5}}]}})
    assert isinstance(event, protocol.ItemCreate)
    part = event.item.content[0]
    assert isinstance(part, protocol.InputImage)
    assert part.streamagent is not None and part.streamagent.timestamp == 1.5


@pytest.mark.parametrize(
    ("message", "error", "words"),
    [
        ("{not json", InvalidRequest, "not valid JSON"),
        ("[1, 2]", InvalidRequest, "JSON object"),
        ('{"audio": "AA"}', InvalidRequest, "no 'type'"),
        ('{"type": "response.explode"}', UnknownEvent, "unknown event type 'response.explode'"),
        ('{"type": "input_audio_buffer.append"}', InvalidRequest, "audio: Field required"),
        ('{"type": "session.update", "session": {"streamagent": {"sample_fps": 0}}}',
         InvalidRequest, "sample_fps"),
        ('{"type": "conversation.item.create", "item": {"type": "message", "content": '
         '[{"type": "input_video"}]}}', InvalidRequest, "item.content.0"),
    ],
)
def test_bad_events_are_explained(message: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        protocol.parse_event(message)
    assert words in str(info.value)
    assert type(info.value) is error


def test_unknown_event_lists_supported_types() -> None:
    with pytest.raises(UnknownEvent) as info:
        protocol.parse_event('{"type": "nope"}')
    assert "response.create" in str(info.value)
    assert info.value.param == "type"
