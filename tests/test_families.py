"""How a request becomes a model's chat, frames and decoding options (unit tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from agent.config import GenerationConfig, ModelConfig
from agent.engine import ModelRequest, Turn
from agent.families import decoding, fit, messages, subsample
from plugins.hf.handlers import load_examples


def test_chat_order_instructions_examples_history_then_question() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    request = ModelRequest(prompt="And this one?", instructions="Be brief.",
                           examples=((img, "A black square."),),
                           history=(Turn("user", "hi"), Turn("assistant", "hello"),
                                    Turn("system", "ignored")))
    msgs = messages(request, [{"type": "image"}])
    assert [(m["role"], [c["type"] for c in m["content"]]) for m in msgs] == [
        ("system", ["text"]), ("user", ["image"]), ("assistant", ["text"]),
        ("user", ["text"]), ("assistant", ["text"]), ("user", ["image", "text"])]
    assert msgs[2]["content"][0]["text"] == "A black square."
    assert msgs[-1]["content"][-1]["text"] == "And this one?"


def test_frames_fit_a_pixel_budget_and_video_is_capped_uniformly() -> None:
    big = np.zeros((1080, 1920, 3), np.uint8)
    small = fit(big, 640 * 480)
    assert small.shape[0] * small.shape[1] <= 640 * 480
    assert abs(small.shape[1] / small.shape[0] - 16 / 9) < 0.02
    assert small.flags.writeable and fit(small, 10**9).flags.writeable
    frames = tuple(np.full((2, 2, 3), i, np.uint8) for i in range(200))
    picked = subsample(frames)
    assert len(picked) == 64
    idx = [int(f[0, 0, 0]) for f in picked]
    assert idx == sorted(idx) and idx[0] < 4 and idx[-1] > 195
    assert len(subsample(frames[:10])) == 10


def test_decoding_options_greedy_sampling_and_overrides() -> None:
    greedy = decoding(ModelConfig(engine="transformers"), {})
    assert greedy["do_sample"] is False and "temperature" not in greedy
    cfg = ModelConfig(engine="transformers",
                      generation=GenerationConfig(do_sample=True, temperature=0.3, top_p=0.9))
    sampled = decoding(cfg, {"max_new_tokens": 7, "bogus": 1})
    assert sampled["temperature"] == 0.3 and sampled["top_p"] == 0.9
    assert sampled["max_new_tokens"] == 7 and "bogus" not in sampled


def test_few_shot_examples_load_from_files(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (8, 6), "red").save(path)
    ((image, answer),) = load_examples([{"image": str(path), "answer": "Red."}])
    assert image.shape == (6, 8, 3) and tuple(image[0, 0]) == (255, 0, 0) and answer == "Red."


async def test_describe_handler_sends_instructions_examples_history_and_frame(
        tmp_path: Path) -> None:
    from agent.config import Config, HandlerConfig, ProfileConfig
    from agent.plugins import get_plugin_manager
    from agent.runtime import Runtime
    from agent.testing import FakeEngine, FakePlugin, data_url, image_event, jpeg_bytes
    from agent.uvicorn_server import running
    from plugins import hf
    from tests.helpers import Client

    path = tmp_path / "ex.png"
    Image.new("RGB", (8, 6), "blue").save(path)
    config = Config(
        handlers={"describe": HandlerConfig(model="fake", options={
            "few_shot": [{"image": str(path), "answer": "Blue."}]})},
        profiles={"default": ProfileConfig(handlers=["describe"])})
    runtime = Runtime.build(config, get_plugin_manager([FakePlugin(), hf]))
    async with running(runtime) as address:
        client = await Client.connect(address.realtime)
        await client.send({"type": "session.update", "session": {  # prompted afresh: the
            "instructions": "Be brief.", "streamagent": {"memory": False}}})  # history's turns
        for question in ("first?", "second?"):
            await client.send(image_event(data_url(jpeg_bytes("x")), text=question))
            await client.send({"type": "response.create"})
            await client.until("response.done")
        fake = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
        assert isinstance(fake, FakeEngine)
        last = fake.requests[-1]
        assert last.prompt == "second?" and last.instructions == "Be brief."
        assert [a for _, a in last.examples] == ["Blue."]
        assert [(t.role, t.text) for t in last.history] == [
            ("user", "first?"), ("assistant", "tok0 tok1 tok2 tok3 tok4 ")]
        assert last.images[0].shape == (240, 320, 3)
        await client.close()


async def test_a_handler_for_input_the_model_lacks_fails_at_start_up() -> None:
    import pytest

    from agent.errors import ConfigError
    from agent.testing import fake_runtime

    runtime = fake_runtime(handlers=("echo",), modalities=["audio"])
    with pytest.raises(ConfigError) as info:
        await runtime.start()
    assert "handler 'echo' needs image input, but model 'fake' takes audio" in str(info.value)
    await runtime.pool.close()


async def test_session_update_names_the_handler_and_the_model_it_cannot_use() -> None:
    from agent.testing import fake_runtime
    from agent.uvicorn_server import running
    from tests.helpers import Client

    async with running(fake_runtime(handlers=(), modalities=["audio"])) as address:
        client = await Client.connect(address.realtime)
        await client.send({"type": "session.update",
                           "session": {"type": "realtime", "streamagent": {"handlers": ["echo"]}}})
        error = await client.error()
        assert error["message"] == "handler 'echo' needs image input, but model 'fake' takes audio"
        assert error["param"] == "session.streamagent.handlers"
        await client.close()
    async with running(fake_runtime(handlers=(), modalities=["image"])) as address:
        client = await Client.connect(address.realtime)
        assert (await client.update(handlers=["echo"]))["streamagent"]["handlers"] == ["echo"]
        await client.close()
