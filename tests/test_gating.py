"""Scene-change gating: a static scene costs no model call, a changed one is never missed."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from agent.config import Config, GatingConfig, HandlerConfig, ProfileConfig
from agent.gating import SceneGate, Thumbnails, make_gate
from agent.media import Frame, Window
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FONT, ServerThread
from tests.helpers import Client, texts


def scene(corner: str, big: str = "HELLO", shift: int = 0, noise: float = 0.0,
          seed: int = 0, size: int = 16) -> str:
    """A 640x480 JPEG (base64): a big word in the middle, a small one (``size`` px) in a corner;
    dark grey on light grey, so that a brightness ``shift`` clips nowhere."""
    img = Image.new("RGB", (640, 480), (210, 210, 210))
    draw = ImageDraw.Draw(img)
    draw.text((150, 190), big, fill=(40, 40, 40), font=ImageFont.truetype(FONT, 72))
    draw.text((540, 440), corner, fill=(40, 40, 40), font=ImageFont.truetype(FONT, size))
    pixels = np.asarray(img).astype(np.float64) - shift
    if noise:
        pixels += np.random.default_rng(seed).normal(0, noise, pixels.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def window(b64: str, index: int = 0) -> Window:
    return Window(index, index, index + 1, Frame(b64, index))


def gate() -> SceneGate:
    made = make_gate(True, None, Thumbnails())
    assert made is not None
    return made


def test_one_letter_changed_in_a_small_corner_word_is_a_new_scene() -> None:
    g = gate()
    assert g.admit(window(scene("cat")))
    assert not g.admit(window(scene("cat"), 1))
    assert g.admit(window(scene("cot"), 2))
    assert g.skipped == 1


def test_noise_and_a_brightness_change_are_the_same_scene() -> None:
    g = gate()
    assert g.admit(window(scene("cat", noise=12, seed=1)))
    assert not g.admit(window(scene("cat", noise=12, seed=2), 1))
    assert not g.admit(window(scene("cat", shift=30), 2))
    assert g.skipped == 2


def test_a_slow_drift_adds_up_against_the_scene_acted_on() -> None:
    g = gate()
    assert g.admit(window(scene("cat")))
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(scene("cat"))))).astype(np.int16)
    admitted = []
    for step in range(1, 9):  # a patch brightens 4 grey levels a window: each step is noise
        img[20:120, 20:120] += 4
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=85)
        admitted.append(g.admit(window(base64.b64encode(buf.getvalue()).decode(), step)))
    assert not any(admitted[:2]) and any(admitted)


def test_work_without_a_frame_and_corrupt_frames_pass() -> None:
    g = gate()
    assert g.admit(object())
    assert g.admit(Window(0, 0, 1))
    assert g.admit(window(base64.b64encode(b"\xff\xd8\xff" + b"\0" * 64).decode()))
    assert g.skipped == 0


def test_gating_is_per_handler_configurable() -> None:
    thumbs = Thumbnails()
    assert make_gate(False, None, thumbs) is None
    assert make_gate(True, GatingConfig(enabled=False), thumbs) is None
    assert make_gate(False, GatingConfig(enabled=True), thumbs) is not None


@pytest.fixture(scope="module")
def reader() -> Iterator[tuple[str, dict[str, int]]]:
    """The embedded text-in-view handler, live, with a count of OCR model calls."""
    config = Config(profiles={"default": ProfileConfig(handlers=["text_in_view"], live=True)})
    runtime = Runtime.build(config, get_plugin_manager())
    engine: Any = runtime.pool.engines["ocr"]  # type: ignore[attr-defined]
    calls = {"n": 0}
    lock = threading.Lock()
    real = engine.generate

    def counted(*args: Any) -> Any:
        with lock:
            calls["n"] += 1
        return real(*args)

    engine.generate = counted
    with ServerThread(runtime) as address:
        yield address.realtime, calls


def frame_event(b64: str, ts: float) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_image", "image_url": "data:image/jpeg;base64," + b64,
                         "streamagent": {"timestamp": ts}}]}}


@pytest.mark.slow
async def test_static_scene_costs_no_model_call_and_a_corner_change_is_read(
        reader: tuple[str, dict[str, int]], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.conversation")
    url, calls = reader
    client = await Client.connect(url)
    try:
        first, changed = scene("MILK", size=24), scene("MILD", size=24)  # one letter, 24 px
        await client.send(frame_event(first, 0.0))
        await client.send(frame_event(first, 1.0))  # closes window 0
        said = texts(await client.until("response.done", 60))
        assert "HELLO" in "".join(said) and "MILK" in "".join(said)
        before = calls["n"]
        assert before == 1
        for ts in range(2, 12):  # ten more windows of the same scene
            await client.send(frame_event(first, float(ts)))
        for ts in range(12, 15):
            await client.send(frame_event(changed, float(ts)))
        events = await client.until("response.done", 60)
        assert "MILD" in "".join(texts(events))
        created = next(e for e in events if e["type"] == "response.created")
        assert int(created["response"]["metadata"]["windows_skipped"]) >= 1
        assert created["response"]["metadata"]["window_start_ms"] in {"11000", "12000", "13000"}
        assert calls["n"] == 2  # the static windows cost nothing; the change cost one call
        await client.send({"type": "response.create"})  # a question always looks
        answer = "".join(texts(await client.until("response.done", 60)))
        assert "MILD" in answer and calls["n"] == 3
    finally:
        await client.close()
    for _ in range(100):  # the session logs its counts when it has closed
        closed = [r.getMessage() for r in caplog.records if " closed: " in r.getMessage()]
        if closed:
            break
        await asyncio.sleep(0.05)
    skipped = int(re.search(r"(\d+) skipped as unchanged", closed[0]).group(1))  # type: ignore[union-attr]
    assert skipped >= int(created["response"]["metadata"]["windows_skipped"]) >= 1


@pytest.mark.slow
async def test_gating_off_calls_the_model_for_every_window() -> None:
    config = Config(profiles={"default": ProfileConfig(handlers=["faces"], live=True)},
                    handlers={"faces": HandlerConfig(gating=GatingConfig(enabled=False))})
    runtime = Runtime.build(config, get_plugin_manager())
    engine: Any = runtime.pool.engines["faces"]  # type: ignore[attr-defined]
    seen = threading.Semaphore(0)
    real = engine.generate

    def counted(*args: Any) -> Any:
        seen.release()
        return real(*args)

    engine.generate = counted
    with ServerThread(runtime) as address:
        client = await Client.connect(address.realtime)
        try:
            await client.send(frame_event(scene("cat"), 0.0))
            for ts in range(1, 5):  # each sends closes a window showing the same scene
                await client.send(frame_event(scene("cat"), float(ts)))
                assert await asyncio.to_thread(seen.acquire, True, 60)
        finally:
            await client.close()


async def test_skip_and_drop_counts_outlive_the_handlers() -> None:
    from agent.live import LiveMedia
    from agent.testing import FakePlugin

    config = Config(profiles={"default": ProfileConfig(handlers=["echo"], live=True)},
                    handlers={"echo": HandlerConfig(gating=GatingConfig(enabled=True))})
    runtime = Runtime.build(config, get_plugin_manager([FakePlugin()]))

    async def busy(handler: Any, work: Any) -> None:
        await asyncio.Event().wait()

    media = LiveMedia(runtime, "s", busy, profile=runtime.profile("default"))
    media.set_handlers(["echo"])
    slot = media.slots["echo"]
    for item in range(3):  # the worker has not run yet: two are replaced before it looks
        slot.mailbox.put(item)
    assert slot.gate is not None
    slot.gate.skipped = 4
    media.set_handlers([])
    media.set_handlers(["echo"])
    await media.close()
    assert (media.handlers_dropped, media.windows_skipped, media.skipped("echo")) == (2, 4, 4)
