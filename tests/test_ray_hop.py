"""What crosses the Ray hop: packed pictures and coalesced text (no Ray needed)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import pickle
from typing import Any

import numpy as np
import pytest

from agent.config import ModelConfig
from agent.engine import ModelRequest
from agent.families import fit as engine_fit
from agent.media import RGB, decode_image
from agent.parts import TextDelta, ToolCallDelta, Usage, text_only
from agent.ray.hop import PackedRequest, batches, coalesce, fit, pack, unpack
from agent.testing import FakeEngine, fake_model, jpeg_bytes


def camera(text: str, size: tuple[int, int] = (1280, 720)) -> RGB:
    return decode_image(base64.b64encode(jpeg_bytes(text, size=size, quality=90)).decode())


def test_pictures_cross_small_at_the_models_budget() -> None:
    frames = tuple(camera(f"frame {i}") for i in range(8))
    request = ModelRequest(prompt="what happens?", video=frames, images=(frames[0],),
                           examples=((frames[1], "a frame"),))
    raw = len(pickle.dumps(request))
    packed = pack(request, 640 * 480, 90)
    sent = len(pickle.dumps(packed))
    assert isinstance(packed, PackedRequest) and sent < raw / 20, (sent, raw)
    back = unpack(pickle.loads(pickle.dumps(packed)))
    assert back.prompt == "what happens?" and back.examples[0][1] == "a frame"
    assert len(back.video) == 8 and len(back.images) == 1
    h, w = back.video[0].shape[:2]
    assert h * w <= 640 * 480 and abs(w / h - 1280 / 720) < 0.01
    # the engine's own downscale leaves it as it is: the model sees one resize, as before
    assert engine_fit(back.video[0], 640 * 480).shape == back.video[0].shape
    assert engine_fit(frames[0], 640 * 480).shape == back.images[0].shape
    # and the picture is the same picture (JPEG at quality 90)
    expected = fit(frames[3], 640 * 480).astype(int)
    assert np.abs(back.video[3].astype(int) - expected).mean() < 3


def test_no_budget_keeps_the_size() -> None:
    frame = camera("x", size=(320, 240))
    back = unpack(pack(ModelRequest(images=(frame,)), None, 90))
    assert back.images[0].shape == frame.shape


def engine(tokens: int, delay_s: float = 0.0) -> FakeEngine:
    return FakeEngine("fake", fake_model(tokens=tokens, delay_s=delay_s))


async def test_coalesced_text_is_the_same_text_in_fewer_items() -> None:
    fake = engine(400)
    await fake.start()
    items = [t async for t in text_only(coalesce(fake.stream(ModelRequest()), 0.03))]
    assert "".join(items) == "".join(f"tok{i} " for i in range(400))
    assert items[0].startswith("tok0 ") and len(items) < 400  # the first at once
    assert [t async for t in text_only(coalesce(fake.stream(ModelRequest()), 0))] == \
        [f"tok{i} " for i in range(400)]  # interval 0: every delta as it comes
    items = [b async for b in batches(fake.stream(ModelRequest()), 5.0)]
    assert [type(p) for p in items[-1]] == [TextDelta, Usage]  # the usage rides with the text
    assert all([type(p) for p in b] == [TextDelta] for b in items[:-1])


async def test_other_parts_pass_the_hop_in_order_after_the_text_before_them() -> None:
    fake = FakeEngine("fake", ModelConfig(engine="fake", options={"tokens": 50,
                                                                   "tool_call": "alert"}))
    await fake.start()
    for interval in (0.03, 0):
        parts = [p async for p in coalesce(fake.stream(ModelRequest(prompt="a b")), interval)]
        kinds = [type(p).__name__ for p in parts]
        first_call = kinds.index("ToolCallDelta")
        assert set(kinds[:first_call]) == {"TextDelta"}
        assert kinds[first_call:] == ["ToolCallDelta", "ToolCallDelta", "Usage"]
        assert "".join(p.text for p in parts if isinstance(p, TextDelta)) == \
            "".join(f"tok{i} " for i in range(50))
        call = [p for p in parts if isinstance(p, ToolCallDelta)]
        assert (call[0].name, call[0].arguments + call[1].arguments) == \
            ("alert", f'{{"window": {len(fake.requests)}}}')
        assert parts[-1] == Usage(prompt_tokens=2, completion_tokens=50, finish_reason="stop")


async def test_closing_the_coalesced_stream_stops_the_engine() -> None:
    fake = engine(1000, delay_s=0.005)
    await fake.start()
    stream = coalesce(fake.stream(ModelRequest()), 0.03)
    async with contextlib.aclosing(stream):
        async for _ in stream:
            break
    stopped = fake.generated
    await asyncio.sleep(0.2)
    assert fake.generated == stopped < 1000 and fake.active == 0


async def test_engine_errors_pass_through_after_the_text_so_far() -> None:
    fake = FakeEngine("fake", ModelConfig(engine="fake", options={"tokens": 5,
                                                                   "fail_after": 3}))
    await fake.start()
    got: list[str] = []
    try:
        async for text in text_only(coalesce(fake.stream(ModelRequest()), 0.03)):
            got.append(text)
    except RuntimeError as exc:
        assert "fake engine failure" in str(exc)
    else:
        raise AssertionError("the engine's error was swallowed")
    assert "".join(got) == "tok0 tok1 tok2 "


class _Call:
    """What a Serve streaming handle call returns: an async iterator with ``cancel()``; this
    one fails as a call to a dead replica does, or streams its parts."""

    def __init__(self, parts: list[Any], error: BaseException | None,
                 stalled: bool = False) -> None:
        self.parts, self.error, self.cancelled = iter(parts), error, False
        self.stalled = stalled
        """Held as Serve's router holds a call while no replica can take it."""

    def __aiter__(self) -> _Call:
        return self

    async def __anext__(self) -> Any:
        if self.stalled:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        try:
            return next(self.parts)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    def __init__(self, errors: list[BaseException | None], stalled: bool = False) -> None:
        self.errors, self.calls = errors, []  # type: ignore[var-annotated]
        self.generate, self.stalled = self, stalled

    def remote(self, request: Any) -> _Call:
        call = _Call([(TextDelta("hi"),)], self.errors.pop(0) if self.errors else None,
                     self.stalled)
        self.calls.append(call)
        return call


def _pool(handle: _Handle) -> Any:
    from agent.ray.pool import RayPool

    pool = object.__new__(RayPool)
    pool.first_delta_timeout_s, pool.handles, pool.jpeg_quality = 5.0, {"m": handle}, 0
    pool._names = ["m"]
    return pool


async def test_a_replica_lost_before_it_answered_is_tried_once_more() -> None:
    from ray.exceptions import ActorDiedError

    from agent.errors import EngineError

    once = _Handle([ActorDiedError()])
    assert [p async for p in _pool(once).stream("m", ModelRequest())] == [TextDelta("hi")]
    assert len(once.calls) == 2 and once.calls[0].cancelled
    twice = _Handle([ActorDiedError(), ActorDiedError()])
    with pytest.raises(EngineError, match="model 'm' failed"):
        _ = [p async for p in _pool(twice).stream("m", ModelRequest())]
    assert len(twice.calls) == 2
    failing = _Handle([RuntimeError("the model broke")])  # not a lost replica: no retry
    with pytest.raises(EngineError, match="the model broke"):
        _ = [p async for p in _pool(failing).stream("m", ModelRequest())]
    assert len(failing.calls) == 1


class _Replicas:
    """What Serve's controller says of the model's running replicas (``None``: nothing)."""

    poll_s = 0.5

    def __init__(self, running: int | None, known: int | None = None) -> None:
        self.value, self.asked, self.last = running, 0, known

    async def running(self, model: str) -> int | None:
        self.asked += 1
        return self.value

    def known(self, model: str) -> int | None:
        return self.last


async def test_a_live_call_no_replica_can_take_fails_before_its_deadline() -> None:
    """A live window's call that Serve's router holds fails once it has waited
    ``live_wait_s`` when Serve shows no replica of its model running, at once while none is
    known to run. A question, and a live call while a replica runs (its turn will come) or
    while the controller says nothing, wait to the call's deadline."""
    from agent.errors import EngineError

    def stalled_pool(running: int | None, live_wait_s: float = 0.05,
                     known: int | None = None) -> Any:
        pool = _pool(_Handle([], stalled=True))
        pool.first_delta_timeout_s, pool.live_wait_s = 0.3, live_wait_s
        pool.replicas = _Replicas(running, known)
        return pool

    # past the 0.3 s deadline, the failure would be "did not answer": these fail before it
    for pool in (stalled_pool(0), stalled_pool(0, live_wait_s=60, known=0)):
        with pytest.raises(EngineError, match="model 'm' has no running replica"):
            _ = [p async for p in pool.stream("m", ModelRequest(live=True))]
        assert pool.replicas.asked == 1 and pool.handles["m"].calls[0].cancelled
    for running, live in ((1, True), (None, True), (0, False)):
        pool = stalled_pool(running)
        with pytest.raises(EngineError, match="did not answer within 0.3 s"):
            _ = [p async for p in pool.stream("m", ModelRequest(live=live))]
        assert (pool.replicas.asked > 0) == live, (running, live)
        assert [c.cancelled for c in pool.handles["m"].calls] == [True]


async def test_serve_replicas_asks_the_controller_once_for_every_waiting_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Running replicas per model, from ``serve.status()``: one question for many callers; a
    failed or stale answer is unknown (``None``), never 0."""
    from types import SimpleNamespace

    from ray import serve

    from agent.ray import pool

    asked: list[int] = []

    def status() -> Any:
        asked.append(1)
        if len(asked) > 1:
            raise RuntimeError("the controller is gone")
        states = {"m": {"STARTING": 1}, "n": {"RUNNING": 2, "STOPPING": 1}}
        return SimpleNamespace(applications={
            name: SimpleNamespace(deployments={name: SimpleNamespace(replica_states=s)})
            for name, s in states.items()})

    monkeypatch.setattr(serve, "status", status)
    replicas = pool.ServeReplicas()
    assert replicas.known("m") is None
    got = await asyncio.gather(*(replicas.running(m) for m in ("m", "n", "nowhere")))
    assert got == [0, 2, None] and len(asked) == 1
    replicas._asked_at = replicas._answered_at = -1e9  # long ago: asked again, and it fails
    assert await replicas.running("m") is None and len(asked) == 2
    await replicas.close()
