"""Watches (``session.streamagent.watches``): the firing rule on a fake clock, the checks of a
client's entries as ``error`` events on a real server, the LLM path through the pool with an
engine that honours ``output_schema``, and end to end on the embedded default models."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from agent.config import ModelConfig, ProfileConfig
from agent.engine import ModelRequest, ThreadedEngine
from agent.handler import SessionOptions
from agent.hookspecs import hookimpl
from agent.media import Frame, Window
from agent.streamer import stream_file
from agent.testing import ServerThread, data_url, fake_runtime, image_event, jpeg_bytes
from agent.uvicorn_server import Address, running
from agent.watch_models import YES_NO
from agent.watch_runner import Watches
from agent.watches import Firing, Watch, WatchState, resolve
from tests.helpers import Client
from tests.media import flite_wav, read_wav, word_video

GEMINI = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


# --- the firing rule ----------------------------------------------------------------------

def run(state: WatchState, verdicts: str, step_s: float = 1.0) -> list[int]:
    """The windows (one per ``step_s`` seconds, from 0) at which ``state`` fires, for
    verdicts written as ``1`` (holds) and ``0``."""
    return [i for i, v in enumerate(verdicts) if state.step(v == "1", i * step_s)]


def test_fires_once_per_appearance_on_the_change() -> None:
    assert run(WatchState(confirm=1, cooldown_s=0), "0111001100") == [1, 6]


def test_fires_once_the_condition_held_for_confirm_windows() -> None:
    assert run(WatchState(confirm=2, cooldown_s=0), "01011101110") == [4, 8]
    assert run(WatchState(confirm=3, cooldown_s=0), "1101110111") == [5, 9]


def test_holding_on_never_fires_again_hysteresis() -> None:
    state = WatchState(confirm=1, cooldown_s=2)
    assert run(state, "1" * 30) == [0]
    assert state.fired == 1 and not state.armed


def test_cooldown_holds_back_a_return_until_it_ends_if_it_still_holds() -> None:
    # fired at 0; gone at 1; back at 2..3 (cooling down until 5); gone; back from 7 on
    assert run(WatchState(confirm=1, cooldown_s=5), "10110001111") == [0, 7]
    # back during the cooldown and still there when it ends: fires then, once
    assert run(WatchState(confirm=1, cooldown_s=5), "10111111111") == [0, 5]


def test_the_cooldown_is_in_seconds_of_media_time() -> None:
    state = WatchState(confirm=1, cooldown_s=1.0)
    assert run(state, "101010", step_s=0.25) == [0, 4]  # 0.0 s, then 1.0 s


def test_a_face_must_be_seen_before_it_can_leave() -> None:
    leaves = Watch("gone", "face", "leaves")
    appears = Watch("here", "face", "appears")
    from agent.watches import state_of

    assert not state_of(leaves).armed and state_of(appears).armed
    # "no face" holds at once, but only the change after a face counts
    assert run(state_of(Watch("gone", "face", "leaves", cooldown_s=0)), "1100111") == [4]


def test_a_firing_says_what_fired_with_the_window_times() -> None:
    watch = Watch("exit", "text_contains", "EXIT", model="ocr")
    meta = Firing(watch, 3.0, 4.0, superseded=2).metadata()
    assert watch.says() == 'watch "exit": text "EXIT" in view'
    assert meta == {"handler": "watch", "modality": "image", "window_start_ms": "3000",
                    "window_end_ms": "4000", "streamagent_watch": "exit",
                    "windows_superseded": "2"}
    assert Watch("hi", "speech_contains", "hello").says() == 'watch "hi": heard "hello"'


# --- an engine that answers yes / no about a picture --------------------------------------

class Judge(ThreadedEngine):
    """Says whether a picture is dark: ``yes`` or ``no``, as JSON when the request carries an
    output schema (the form a constraining engine gives it). Option ``delay_s``: it thinks
    that long. Counts its requests and the most it ran at once."""

    kind = "judge"
    constrains = True

    def load(self) -> None:
        self.delay_s = float(self.config.options.get("delay_s", 0.0))
        self.requests: list[ModelRequest] = []
        self.active = self.most = 0

    def generate(self, request: ModelRequest, cancelled: threading.Event) -> Iterator[str]:
        self.requests.append(request)
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            time.sleep(self.delay_s)
            answer = "yes" if request.images and request.images[0].mean() < 128 else "no"
            if request.output_schema is not None:
                assert answer in request.output_schema["enum"]
                yield json.dumps(answer)
            else:
                yield answer.capitalize() + "."
        finally:
            self.active -= 1


class JudgePlugin:
    def __init__(self, **options: Any) -> None:
        self.options = options

    @hookimpl
    def register_engines(self, register: Any) -> None:
        register(Judge)

    @hookimpl
    def register_models(self, register: Any) -> None:
        register("judge", ModelConfig(engine="judge", options=self.options))


async def soon(check: Any, timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout_s} s")


def black(ts: float) -> Frame:
    return Frame.of_image(np.zeros((48, 64, 3), np.uint8), ts)


async def test_one_check_at_a_time_and_the_newest_window_wins() -> None:
    runtime = fake_runtime(plugins=(JudgePlugin(delay_s=0.3),))
    await runtime.pool.start()
    judge: Any = runtime.pool.engines["judge"]  # type: ignore[attr-defined]
    fired: list[Firing] = []
    watches = Watches(runtime.pool, "sess", SessionOptions(), fired.append)
    watch = Watch("dark", "condition", "it is dark", cooldown_s=0, confirm_windows=1,
                  model="judge")
    watches.set(resolve((watch,), runtime, ProfileConfig()))
    watches.feed(Window(0, 0.0, 1.0, black(0.5)))
    await soon(lambda: judge.active)
    for i in range(1, 10):  # nine windows while the first is being checked
        watches.feed(Window(i, i, i + 1.0, black(i + 0.5)))
    await soon(lambda: watches.checked == 2)
    await watches.close()
    await runtime.pool.close()
    assert judge.most == 1 and len(judge.requests) == 2
    assert watches.dropped == 8  # windows 1-8 gave way to window 9
    assert [(f.watch.id, f.start) for f in fired] == [("dark", 0.0)]  # 9 still holds: quiet
    request = judge.requests[0]
    assert request.output_schema == YES_NO and request.options["max_new_tokens"] <= 5
    assert request.live and request.session == "sess" and "it is dark" in request.prompt


# --- the checks of a client's watches, on a real server -----------------------------------

@pytest.fixture(scope="module")
def judged() -> Iterator[Address]:
    with ServerThread(fake_runtime(plugins=(JudgePlugin(),))) as address:
        yield address


DOOR = {"type": "function", "name": "open_door", "description": "Opens the door",
        "parameters": {"type": "object", "properties": {"watch": {"type": "string"}}}}
TOO_MANY = [{"id": str(i), "face": "appears"} for i in range(33)]


@pytest.mark.parametrize(("watches", "expected"), [
    ([{"id": "a", "text_contains": "x", "hook": "http://x"}],
     "session.streamagent.watches.0.hook: Extra inputs are not permitted"),
    ([{"id": "a", "condition": "dark?", "model": "judge", "webhook": "http://x"}],
     "webhooks are off on this server (server.webhooks)"),
    ([{"id": "a", "text_contains": "x", "face": "appears"}],
     "exactly one condition of condition, text_contains, face, speech_contains; it has "
     "text_contains, face"),
    ([{"id": "a", "cooldown_s": 3}], "it has none"),
    ([{"id": "a", "face": "appears", "model": "judge"}], "model goes with condition only"),
    ([{"id": "a", "face": "blinks"}], "watches.0.face: Input should be 'appears' or 'leaves'"),
    ([{"id": "a", "text_contains": "   "}], "only white space"),
    ([{"id": "a", "text_contains": "x" * 201}], "watches.0.text_contains: String should have "
                                                 "at most 200 characters"),
    ([{"id": "a", "condition": "dark?", "confirm_windows": 0}], "watches.0.confirm_windows"),
    (TOO_MANY, "watches: List should have at most 32 items"),
    ([{"id": "a", "condition": "dark?", "model": "judge"}, {"id": "a", "condition": "lit?",
                                                            "model": "judge"}],
     "watch ids must differ: ['a'] given more than once"),
    ([{"id": "a", "condition": "dark?", "model": "gpt-9"}], "no model named 'gpt-9'"),
    ([{"id": "a", "condition": "dark?"}], "no LLM in this session to decide a condition"),
    ([{"id": "a", "text_contains": "EXIT"}], "text_contains needs the model of the "
                                             "text_in_view handler"),
    ([{"id": "a", "condition": "dark?", "model": "judge", "tool": "fly"}],
     "watch 'a' calls 'fly', which is not one of the session's tools (none)"),
])
async def test_a_bad_watch_is_an_error_naming_it_and_the_session_goes_on(
        judged: Address, watches: list[dict[str, Any]], expected: str) -> None:
    client = await Client.connect(judged.realtime)
    await client.send({"type": "session.update",
                       "session": {"streamagent": {"watches": watches}}})
    error = await client.error()
    assert expected in error["message"], error
    assert error["code"] == "invalid_request" and error["param"].startswith(
        "session.streamagent.watches")
    await client.send({"type": "session.update", "session": {"tools": [DOOR], "streamagent": {
        "watches": [{"id": "d", "condition": "dark?", "model": "judge", "tool": "open_door"}]}}})
    session = (await client.until("session.updated"))[-1]["session"]
    assert session["streamagent"]["watches"] == [
        {"id": "d", "condition": "dark?", "model": "judge", "cooldown_s": 10.0,
         "confirm_windows": 2, "tool": "open_door"}]
    await client.close()


# --- an LLM's yes / no, on every protocol -------------------------------------------------

FRAMES = ["white", "black", "black", "black", "white", "white", "black", "black", "white"]
"""Dark at 1-3 and 6-7: with two windows to confirm, a watch fires at 2 and at 7."""


async def send_frames(send: Any, pause_s: float = 0.05) -> None:
    """``send(jpeg, ts)`` each of ``FRAMES``, one per second of media time."""
    for i, color in enumerate(FRAMES):
        await send(jpeg_bytes(color=color), i + 0.5)
        await asyncio.sleep(pause_s)


@pytest.mark.parametrize("beta", [False, True])
async def test_an_llm_condition_fires_through_the_pool_after_two_windows(
        judged: Address, beta: bool) -> None:
    """A session opened on a model name has that model as its LLM; live is off."""
    headers = {"OpenAI-Beta": "realtime=v1"} if beta else None
    client = await Client.connect(f"{judged.ws}/v1/realtime?model=judge",
                                  additional_headers=headers)
    session = await client.update(live=False, watches=[
        {"id": "dark", "condition": "The room is dark.", "cooldown_s": 0}])
    assert session["streamagent"]["watches"][0]["model"] == "judge"
    await send_frames(lambda jpeg, ts: client.send(image_event(data_url(jpeg), ts)))
    delta = "response.text.delta" if beta else "response.output_text.delta"
    fired = []
    for _ in range(2):
        events = await client.until("response.done")
        done = events[-1]["response"]
        assert [e["delta"] for e in events if e["type"] == delta] == [
            'watch "dark": The room is dark.']
        fired.append((done["metadata"]["streamagent_watch"], done["metadata"]["window_start_ms"],
                      done["status"]))
    assert fired == [("dark", "2000", "completed"), ("dark", "7000", "completed")]
    with pytest.raises(TimeoutError):  # and nothing more
        await client.until("response.done", timeout=1.5)
    await client.close()


async def test_a_watch_with_a_tool_fires_as_a_call_of_it_and_its_output_goes_on() -> None:
    """The firing is a ``function_call`` item (no text); it joins the conversation, so the
    client's function output and a new response follow it, as in an Agents SDK tool loop."""
    runtime = fake_runtime(plugins=(JudgePlugin(),))
    async with running(runtime) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=judge")
        await client.send({"type": "session.update", "session": {
            "tools": [DOOR], "streamagent": {"live": False, "watches": [
                {"id": "dark", "condition": "The room is dark.", "tool": "open_door",
                 "cooldown_s": 0}]}}})
        await client.until("session.updated")
        await send_frames(lambda jpeg, ts: client.send(image_event(data_url(jpeg), ts)))
        said = [await client.until("response.done") for _ in range(2)]
        outputs = [events[-1]["response"]["output"] for events in said]
        assert [[item["type"] for item in output] for output in outputs] == [
            ["function_call"], ["function_call"]]
        assert not [e for events in said for e in events if "text" in e["type"]]
        calls = [output[0] for output in outputs]
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
            ("open_door", {"watch": "dark", "window_start_ms": start,
                           "window_end_ms": start + 1000,
                           "what": 'watch "dark": The room is dark.'})
            for start in (2000, 7000)]
        assert said[0][-1]["response"]["metadata"]["streamagent_watch"] == "dark"
        assert [e["type"] for e in said[0] if e["type"].startswith("response.")] == [
            "response.created", "response.output_item.added",
            "response.function_call_arguments.delta", "response.function_call_arguments.done",
            "response.output_item.done", "response.done"]
        # the tool cannot go while a watch calls it
        await client.send({"type": "session.update", "session": {"tools": []}})
        error = await client.error()
        assert error["param"] == "session.streamagent.watches.0.tool", error

        await client.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": calls[0]["call_id"],
            "output": "opened"}})
        await client.send({"type": "response.create"})
        answer = (await client.until("response.done"))[-1]["response"]
        assert answer["status"] == "completed" and answer["output"][0]["type"] == "message"
        await client.close()
        judge: Any = runtime.pool.engines["judge"]  # type: ignore[attr-defined]
        # the watch's questions offer no functions; the session's responses do
        assert [bool(r.tools) for r in judge.requests] == [False] * (len(judge.requests) - 1) + [
            True]
        history = judge.requests[-1].history
        assert [(t.role, [c.name for c in t.tool_calls], t.call_id) for t in history] == [
            ("assistant", ["open_door"], ""), ("assistant", ["open_door"], ""),
            ("tool", [], calls[0]["call_id"])]


async def test_a_gemini_client_hears_a_firing_as_a_model_turn() -> None:
    async with running(fake_runtime(plugins=(JudgePlugin(),))) as address, \
            websockets.connect(f"{address.ws}{GEMINI}", max_size=None) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/judge", "streamagent": {
            "sample_fps": 10, "watches": [{"id": "dark", "condition": "Dark?",
                                           "confirm_windows": 1}]}}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}

        async def frame(jpeg: bytes, ts: float) -> None:  # no media time: the receive clock
            await ws.send(json.dumps({"realtimeInput": {"mediaChunks": [
                {"mimeType": "image/jpeg", "data": base64.b64encode(jpeg).decode()}]}}))

        await send_frames(frame, pause_s=0.2)  # a window each, at 10 windows a second
        said: list[dict[str, Any]] = []
        while not said or not said[-1].get("turnComplete"):
            content = json.loads(await asyncio.wait_for(ws.recv(), 15))["serverContent"]
            said.append(content)
        text = "".join(p["text"] for c in said for p in c.get("modelTurn", {}).get("parts", []))
        assert text == 'watch "dark": Dark?'


async def test_a_gemini_client_gets_a_tool_firing_as_a_tool_call() -> None:
    async with running(fake_runtime(plugins=(JudgePlugin(),))) as address, \
            websockets.connect(f"{address.ws}{GEMINI}", max_size=None) as ws:
        await ws.send(json.dumps({"setup": {
            "model": "models/judge", "tools": [{"functionDeclarations": [
                {"name": "lights_on", "description": "Turns the lights on"}]}],
            "streamagent": {"sample_fps": 10, "watches": [
                {"id": "dark", "condition": "Dark?", "confirm_windows": 1,
                 "tool": "lights_on"}]}}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        for i, color in enumerate(["white", "black"]):
            await ws.send(json.dumps({"realtimeInput": {"mediaChunks": [
                {"mimeType": "image/jpeg",
                 "data": base64.b64encode(jpeg_bytes(color=color)).decode()}]}}))
            await asyncio.sleep(0.2 * (i + 1))
        message = json.loads(await asyncio.wait_for(ws.recv(), 15))
        (call,) = message["toolCall"]["functionCalls"]
        assert call["name"] == "lights_on" and call["id"]
        assert call["args"]["watch"] == "dark" and call["args"]["what"] == 'watch "dark": Dark?'


# --- end to end on the embedded default ---------------------------------------------------

SCREENS = ["", "EXIT", "EXIT", "EXIT", "", "", "EXIT", "EXIT", "EXIT", ""]
"""A sign that appears at 1 s and at 6 s, three seconds each time."""


@pytest.mark.slow
async def test_text_in_view_fires_once_per_appearance_within_two_windows(
        embedded: Address, tmp_path: Path) -> None:
    video = word_video(tmp_path / "exit.mp4", SCREENS)
    began, heard_s = time.monotonic(), []
    replies, stats = await stream_file(
        str(video), embedded.realtime, handlers=[],
        on_reply=lambda _: heard_s.append(time.monotonic() - began), watches=[
            {"id": "exit", "text_contains": "exit", "cooldown_s": 1},
            {"id": "entrance", "text_contains": "ENTRANCE"}])
    assert stats.frames == 100 and not stats.errors
    fired = [(r.metadata["streamagent_watch"], r.start_ms, r.end_ms, r.text, r.status)
             for r in replies]
    assert len(fired) == 2, fired
    for (watch, start, end, text, status), change_ms in zip(fired, (1000, 6000), strict=True):
        assert (watch, text, status) == ("exit", 'watch "exit": text "exit" in view',
                                         "completed")
        assert start is not None and change_ms <= start < change_ms + 2000 and end == start + 1000
    # sent at real-time pace: each firing comes after its change was shown, the first before
    # the second change is (how soon is benchmarks/watches.py's figure)
    assert 1 < heard_s[0] < 6 < heard_s[1], heard_s


@pytest.mark.slow
async def test_a_face_appears_then_leaves_with_live_off(embedded: Address) -> None:
    from tests.test_openai_sdk import astronaut_jpeg

    client = await Client.connect(embedded.realtime)
    await client.update(live=False, handlers=["text_in_view"], watches=[
        {"id": "here", "face": "appears"}, {"id": "gone", "face": "leaves"}])
    pictures = [jpeg_bytes(), astronaut_jpeg(), astronaut_jpeg(), jpeg_bytes(), jpeg_bytes()]
    for i, picture in enumerate(pictures):
        await client.send(image_event(data_url(picture), timestamp=i + 0.1))
        await asyncio.sleep(0.3)
    said = [(await client.until("response.done"))[-1]["response"] for _ in range(2)]
    assert [(s["metadata"]["streamagent_watch"], s["metadata"]["window_start_ms"],
             s["output"][0]["content"][0]["text"]) for s in said] == [
        ("here", "1000", 'watch "here": a face appeared'),
        ("gone", "3000", 'watch "gone": the face left')]
    with pytest.raises(TimeoutError):  # the text_in_view handler says nothing: live is off
        await client.until("response.done", timeout=2)
    await client.close()


@pytest.mark.slow
async def test_a_phrase_heard_fires_with_the_utterance_times(
        embedded: Address, tmp_path: Path) -> None:
    wav = flite_wav(tmp_path / "speech.wav", "hello world. this is a test of speech recognition")
    speech, rate = read_wav(wav)
    assert speech.size
    replies, _ = await stream_file(str(wav), embedded.realtime, handlers=[], watches=[
        {"id": "hi", "speech_contains": "Hello"}, {"id": "bye", "speech_contains": "goodbye"}])
    assert [(r.metadata["streamagent_watch"], r.text, r.metadata["modality"])
            for r in replies] == [("hi", 'watch "hi": heard "Hello"', "audio")]
    assert replies[0].start_ms is not None and replies[0].start_ms < 500
    assert replies[0].end_ms is not None and replies[0].end_ms > 1000
