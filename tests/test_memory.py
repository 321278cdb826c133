"""A session's timeline (agent/timeline.py): the prompt of each live second extends the one
before, the budget is kept by rare cuts, questions see what has gone from view, and cached
tokens reach the client. Unit tests, the real server with a fake engine, then tiny real
checkpoints (slow)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

import plugins.hf as hf
from agent.config import (
    Config,
    GenerationConfig,
    HandlerConfig,
    MemoryConfig,
    ModelConfig,
    ProfileConfig,
)
from agent.engine import Entry, ModelRequest
from agent.families import messages
from agent.parts import Part, TextDelta, Usage
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import FakePlugin, ServerThread, data_url, image_event, jpeg_bytes
from agent.timeline import Timeline, stamp
from agent.uvicorn_server import Address, running
from tests.helpers import Client

PIXEL = np.zeros((2, 2, 3), np.uint8)


def shape(entries: tuple[Entry, ...]) -> list[tuple[str, str, str, bool]]:
    """What a prompt is made of, comparable: role, text, picture's key, whether a sound."""
    return [(e.role, e.text, e.key, e.audio is not None) for e in entries]


async def answer(*words: str, prompt_tokens: int | None = None) -> AsyncIterator[Part]:
    for word in words:
        yield TextDelta(word)
    yield Usage(prompt_tokens=prompt_tokens, completion_tokens=len(words))


async def second(timeline: Timeline, t: int, prompt: str = "Describe.") -> tuple[Entry, ...]:
    """One live second: a frame at ``t``, a call, its answer; the entries the call sent."""
    timeline.see(t + 0.5, PIXEL, f"frame{t}")
    render = timeline.render(prompt)
    async for _ in timeline.exchange(render, prompt, answer(f"a view at {t}")):
        pass
    return render.entries


def test_media_time_reads_as_minutes_and_seconds() -> None:
    assert [stamp(0), stamp(65.9), stamp(3725)] == ["[00:00]", "[01:05]", "[1:02:05]"]


async def test_each_second_extends_the_prompt_of_the_second_before() -> None:
    timeline = Timeline(MemoryConfig())
    sent = [shape(await second(timeline, t)) for t in range(6)]
    for before, after in zip(sent, sent[1:], strict=False):
        assert after[:len(before)] == before
        assert after[len(before):] == [  # the answer, the new frame with its time, the ask
            ("assistant", f"a view at {len(sent[:sent.index(before)])}", "", False),
            ("user", stamp(len(sent[:sent.index(after)]) + 0.5), "", False),
            ("user", "", f"frame{sent.index(after)}", False), ("user", "Describe.", "", False)]
    chat = messages(ModelRequest(instructions="Be brief.", sequence=tuple(
        await second(timeline, 6))), [])
    assert [m["role"] for m in chat] == ["system"] + ["user", "assistant"] * 6 + ["user"]
    assert chat[-1]["content"] == [{"type": "text", "text": "[00:06]"}, {"type": "image"},
                                   {"type": "text", "text": "Describe."}]


async def test_past_its_budget_the_timeline_cuts_rarely_down_to_the_retention_ratio() -> None:
    timeline = Timeline(MemoryConfig(max_frames=10, retention_ratio=0.5))
    sent, held = [], []
    for t in range(40):
        sent.append(shape(await second(timeline, t)))
        held.append(timeline.media)
    broken = [t for t in range(1, 40) if sent[t][:len(sent[t - 1])] != sent[t - 1]]
    # the 11th frame passes the budget; a cut leaves 5, and 6 seconds later it passes again
    assert broken == [10, 16, 22, 28, 34] and timeline.cuts == 5
    assert max(held) == 10 and held[9:12] == [10, 5, 6]
    assert sent[10][:3] == [("user", "(What came before [00:06] is forgotten.)", "", False),
                            ("user", "[00:06]", "", False), ("user", "", "frame6", False)]


async def test_the_token_budget_is_learned_from_the_engines_counts_and_cut_too() -> None:
    timeline = Timeline(MemoryConfig(max_frames=1000, max_tokens=2000, retention_ratio=0.5))
    timeline.see(0.5, PIXEL, "a")
    render = timeline.render("Describe.")
    async for _ in timeline.exchange(render, "Describe.", answer("ok", prompt_tokens=130)):
        pass
    assert 100 < timeline.frame_tokens < 130  # the frame took the prompt but its few words
    assert abs(timeline.tokens - 130) < 20
    cuts: list[int] = []
    kept: list[int] = []
    for t in range(1, 40):
        await second(timeline, t)
        assert timeline.tokens <= 2000
        if timeline.cuts > len(cuts):
            cuts.append(t)
            kept.append(timeline.tokens)
    # about 140 tokens a second: past 2000 a cut keeps at most 1000, and 8 seconds later
    # the timeline passes 2000 again
    assert cuts == [14, 22, 30, 38] and all(850 < k <= 1000 for k in kept)


def test_a_frame_already_there_is_not_added_again() -> None:
    timeline = Timeline(MemoryConfig())
    assert timeline.see(1.0, PIXEL, "a") and not timeline.see(1.0, PIXEL, "a")
    assert not timeline.see(0.5, PIXEL, "b")  # older than the newest frame: already past
    assert timeline.hear(0.2, np.zeros(160, np.float32), "s")  # sounds have their own order
    assert timeline.media == 2


# --- The real server, a fake engine -------------------------------------------------------

def fake_config() -> Config:
    return Config(
        models={"fake": ModelConfig(engine="fake", options={"tokens": 3})},
        handlers={"describe": HandlerConfig(model="fake")},
        profiles={"default": ProfileConfig(handlers=["describe"], live=True)})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Address, Any]]:
    runtime = Runtime.build(fake_config(), get_plugin_manager([FakePlugin(), hf]))
    async with running(runtime) as address:
        yield address, runtime.pool.engines["fake"]  # type: ignore[attr-defined]


async def show(client: Client, word: str, t: int,
               answered: int | None = None) -> dict[str, Any] | None:
    """A frame showing ``word`` at second ``t`` (it closes the window open before it, if the
    clock has not); then wait for the live response of window ``answered``, if given (its
    ``response.done`` response)."""
    await client.send(image_event(data_url(jpeg_bytes(word)), timestamp=t + 0.5))
    while answered is not None:
        response = (await client.until("response.done", timeout=60))[-1]["response"]
        meta = response["metadata"]
        if "windows_skipped" in meta and meta["window_start_ms"] == str(answered * 1000):
            return dict(response)
    return None


async def live_seconds(client: Client, words: list[str], start: int = 0) -> list[dict[str, Any]]:
    """A frame a second from ``start``; each window before the last answered live."""
    done = [await show(client, word, t, answered=t - 1 if t > start else None)
            for t, word in enumerate(words, start)]
    return [d for d in done if d is not None]


async def test_live_describe_renders_from_the_timeline_and_reports_cached_tokens(
        fake: tuple[Address, Any]) -> None:
    address, engine = fake
    client = await Client.connect(address.realtime)
    done = await live_seconds(client, ["ONE", "TWO", "THREE", "FOUR", "FIVE"])
    sent = [shape(r.sequence) for r in engine.requests]
    assert len(sent) == 4 and all(not r.images and not r.history for r in engine.requests)
    assert all(b[:len(a)] == a for a, b in zip(sent, sent[1:], strict=False))
    assert [e[1] for e in sent[-1] if e[0] == "user" and e[1].startswith("[")] == [
        "[00:00]", "[00:01]", "[00:02]", "[00:03]"]
    assert [e[1] for e in sent[-1] if e[0] == "assistant"] == ["tok0 tok1 tok2"] * 3
    usage = [r["usage"] for r in done]
    prompts = [u["input_tokens"] for u in usage]
    assert prompts == sorted(set(prompts))  # it grows each second
    # each second's prompt is the last one and more: all of the last one is cached
    assert [u["input_token_details"]["cached_tokens"] for u in usage] == [0, *prompts[:-1]]
    await client.close()


async def test_frames_the_gate_skipped_are_not_added(fake: tuple[Address, Any]) -> None:
    address, engine = fake
    client = await Client.connect(address.realtime)
    await live_seconds(client, ["ONE", "TWO", "TWO"])
    for t in (3, 4):  # the same picture: skipped as unchanged, no call
        await show(client, "TWO", t)
    await live_seconds(client, ["THREE", "FOUR"], start=5)
    pictures = [e for e in engine.requests[-1].sequence if e.image is not None]
    assert len(engine.requests) == 3 and len(pictures) == 3  # ONE, TWO, THREE
    await client.close()


async def test_questions_see_the_timeline_and_join_it(fake: tuple[Address, Any]) -> None:
    address, engine = fake
    client = await Client.connect(address.realtime)
    await client.send({"type": "session.update", "session": {"instructions": "Be brief."}})
    await live_seconds(client, ["ONE", "TWO", "THREE"])
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "What did you see first?"}]}})
    await client.send({"type": "response.create"})
    await client.until("response.done")
    asked = engine.requests[-1]
    assert shape(asked.sequence)[-3:] == [  # the open window's frame, then the question
        ("user", "[00:02]", "", False), ("user", "", asked.sequence[-2].key, False),
        ("user", "What did you see first?", "", False)]
    assert sum(e.image is not None for e in asked.sequence) == 3
    assert {r.instructions for r in engine.requests} == {"Be brief."}  # live ones too
    await client.send({"type": "response.create", "response": {
        "conversation": "none", "instructions": "Out of band."}})
    await client.until("response.done")
    assert engine.requests[-1].sequence == () and len(engine.requests[-1].images) == 1
    await show(client, "FOUR", 3, answered=2)  # the live call of THREE's window goes on from both
    then = shape(engine.requests[-1].sequence)
    assert then[:len(shape(asked.sequence))] == shape(asked.sequence)
    assert ("assistant", "tok0 tok1 tok2", "", False) == then[len(asked.sequence)]
    await client.close()


async def test_memory_off_prompts_each_call_afresh(fake: tuple[Address, Any]) -> None:
    address, engine = fake
    client = await Client.connect(address.realtime)
    assert (await client.update(memory=False))["streamagent"]["memory"] is False
    done = await live_seconds(client, ["ONE", "TWO", "THREE"])
    assert [len(r.images) for r in engine.requests] == [1, 1]
    assert all(r.sequence == () for r in engine.requests)
    assert all(r["usage"]["input_token_details"]["cached_tokens"] == 0 for r in done)
    await client.close()


# --- Tiny real checkpoints ----------------------------------------------------------------

@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from agent.tiny import build

    return {family: str(build(family, tmp_path_factory.mktemp(family)))
            for family in ("qwen2.5-vl", "qwen3-vl")}


def tiny_model(engine: str, source: str, **options: Any) -> ModelConfig:
    return ModelConfig(engine=engine, source=source, handlers=["describe"], options=options,
                       memory=MemoryConfig(max_frames=256, max_tokens=100_000),
                       generation=GenerationConfig(max_new_tokens=2, min_new_tokens=2))


@pytest.fixture(scope="module")
def tiny(sources: dict[str, str]) -> Iterator[tuple[Address, Runtime]]:
    """Tiny Qwen2.5-VL and Qwen3-VL on transformers, describe live, budgets of 256 frames."""
    models = {family: tiny_model("transformers", source) for family, source in sources.items()}
    runtime = Runtime.build(Config(models=models), get_plugin_manager([hf]))
    with ServerThread(runtime) as address:
        yield address, runtime


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
async def test_a_question_at_minute_3_is_sent_the_frame_of_minute_1(
        tiny: tuple[Address, Runtime], family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sign reads ZEBRA at minute 1 and is gone after; at minute 3 the question's prompt
    holds that frame (its pixels, its time) and renders, token for token, after the prompt
    of the live call before it. With memory off, it does not."""
    address, runtime = tiny
    engine: Any = runtime.pool.engines[family]  # type: ignore[attr-defined]
    sent: list[ModelRequest] = []
    generate = engine.generate

    def spy(request: ModelRequest, cancelled: Any) -> Any:
        sent.append(request)
        return generate(request, cancelled)

    monkeypatch.setattr(engine, "generate", spy)
    zebra = jpeg_bytes("ZEBRA")
    zebra_pixels = await asyncio.to_thread(engine_image, zebra)
    for memory in (True, False):
        sent.clear()
        client = await Client.connect(address.realtime.replace("=default", f"={family}"))
        await client.update(live=True, memory=memory)
        seconds = [5, 60, 61, 120, 179, 180]
        for open_, t, word in zip([None, *seconds], seconds,
                                  ["CAT", "ZEBRA", "DOG", "OWL", "EMU", "EMU"], strict=False):
            await show(client, word, t, answered=open_)
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What word did the sign show a minute in?"}]}})
        await client.send({"type": "response.create"})
        done = (await client.until("response.done"))[-1]["response"]
        await client.close()
        question = sent[-1]
        if not memory:
            assert question.sequence == () and len(question.images) == 1
            assert not np.array_equal(question.images[0], zebra_pixels)
            continue
        shown = [e.image for e in question.sequence if e.image is not None]
        assert len(shown) == 6 and np.array_equal(shown[1], zebra_pixels)
        assert [e.text for e in question.sequence if e.text.startswith("[")][:3] == [
            "[00:05]", "[01:00]", "[01:01]"]
        assert done["usage"]["input_tokens"] > 6 * 12  # the model read every frame
        before, now = [await asyncio.to_thread(token_ids, engine, r) for r in sent[-2:]]
        assert now[:len(before)] == before


def engine_image(jpeg: bytes) -> Any:
    from agent.media import decode_image

    return decode_image(data_url(jpeg).split(",", 1)[1])


def token_ids(engine: Any, request: ModelRequest) -> list[int]:
    from plugins.hf.inputs import processor_inputs

    inputs = processor_inputs(engine.processor, request, engine.family, engine.modalities,
                              engine.max_pixels, engine.prompter)
    return [int(i) for i in inputs["input_ids"][0]]


@pytest.mark.slow
async def test_vllm_serves_each_second_from_its_prefix_cache(sources: dict[str, str]) -> None:
    """vLLM's own count of cached prompt tokens, as the client reads it: each live second's
    prompt finds the one before it cached (whole blocks: 32 tokens on a CPU), so the tokens
    computed stay flat while the prompt grows; a chat completions request that repeats
    another reports its cached tokens too."""
    import httpx

    import plugins.vllm_engine as vllm

    model = tiny_model("vllm", sources["qwen2.5-vl"], max_model_len=4096)
    runtime = Runtime.build(Config(models={"tiny": model}), get_plugin_manager([hf, vllm]))
    with ServerThread(runtime) as address:
        client = await Client.connect(address.realtime)
        await client.update(live=True)
        done = await live_seconds(client, [f"W{t}" for t in range(10)])
        await client.close()
        chat = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(jpeg_bytes("hi"))}},
            {"type": "text", "text": "What is this? " * 40}]}]}
        usage = [await asyncio.to_thread(lambda: httpx.post(
            f"{address.http}/v1/chat/completions", json=chat, timeout=120).json()["usage"])
            for _ in range(2)]
    prompt = [r["usage"]["input_tokens"] for r in done]
    cached = [r["usage"]["input_token_details"]["cached_tokens"] for r in done]
    assert prompt[-1] > 4 * prompt[0] and cached[-1] >= prompt[-1] - 200, (prompt, cached)
    assert all(c % 32 == 0 for c in cached) and cached[0] == 0
    computed = [p - c for p, c in zip(prompt[3:], cached[3:], strict=True)]
    assert max(computed) < 128, computed  # under one of vLLM's default blocks on a CPU
    assert usage[0]["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage[1]["prompt_tokens_details"]["cached_tokens"] >= 32
