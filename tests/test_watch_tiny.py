"""An LLM's ``condition`` end to end: a real server, a realtime session with condition watches,
and a tiny random-weight Qwen3-VL on the transformers engine, whose yes / no answers are
constrained by the question's ``output_schema``. The answers of random weights cannot be
foretold, so the engine records them, and the test holds the firings to what the firing rule
makes of exactly those answers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from agent.config import Config, ModelConfig
from agent.engine import ModelRequest
from agent.hookspecs import hookimpl
from agent.parts import Usage
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import ServerThread, data_url, image_event, jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import Address
from agent.watch_models import ANSWER_TOKENS, YES_NO
from agent.watches import Watch, state_of
from plugins import hf
from plugins.hf.engine import TransformersEngine
from tests.helpers import Client

pytestmark = pytest.mark.slow
WATCHES = [
    {"id": "dark", "condition": "The room is dark.", "cooldown_s": 0},
    {"id": "person", "condition": "A person is in view.", "confirm_windows": 1,
     "cooldown_s": 2},
]
FRAMES = 14
WIDTH = 96
"""Frame ``i`` is ``WIDTH + 8 * i`` pixels wide, so a recorded question names its window."""


class Recorder(TransformersEngine):
    """The transformers engine, recording every constrained answer with its request. It samples
    them (seeded, temperature 1): greedy, these random weights say yes to everything, and the
    firing rule would meet no ``no``. The schema constrains a sampled answer all the same."""

    kind = "recording-transformers"

    def load(self) -> None:
        super().load()
        self.answers: list[tuple[ModelRequest, str]] = []

    def generate(self, request: ModelRequest,
                 cancelled: threading.Event) -> Iterator[str | Usage]:
        if request.output_schema is None:
            yield from super().generate(request, cancelled)
            return
        request = replace(request, options={**request.options, "do_sample": True,
                                            "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                            "seed": len(self.answers)})
        said = []
        for item in super().generate(request, cancelled):
            if isinstance(item, str):
                said.append(item)
            yield item
        self.answers.append((request, "".join(said)))


class RecorderPlugin:
    @hookimpl
    def register_engines(self, register: Any) -> None:
        register(Recorder)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Address, Runtime]]:
    source = build("qwen3-vl", tmp_path_factory.mktemp("qwen3vl"))
    model = ModelConfig(engine="recording-transformers", family="qwen3-vl", source=str(source),
                        handlers=["describe"])
    runtime = Runtime.build(Config(models={"tiny": model}),
                            get_plugin_manager([hf, RecorderPlugin()]))
    with ServerThread(runtime) as address:
        yield address, runtime


async def firings(client: Client, quiet_s: float = 4.0) -> list[dict[str, str]]:
    """The metadata of every watch's response, until the session has been quiet ``quiet_s``."""
    said: list[dict[str, str]] = []
    while True:
        try:
            event = await client.recv(timeout=quiet_s)
        except TimeoutError:
            return said
        if event["type"] == "response.done":
            assert event["response"]["status"] == "completed", event
            said.append(event["response"]["metadata"])


def expected(watch: Watch, answers: list[tuple[int, str]]) -> list[str]:
    """The windows (their start, in ms) where ``watch`` fires, for the answers to its question
    about windows ``i`` (``[i, i + 1)`` s), in the order they were asked."""
    state = state_of(watch)
    return [str(i * 1000) for i, answer in answers if state.step(answer == '"yes"', i + 1.0)]


async def test_a_condition_fires_as_the_firing_rule_says_for_the_models_answers(
        served: tuple[Address, Runtime]) -> None:
    address, runtime = served
    client = await Client.connect(f"{address.ws}/v1/realtime?model=tiny")
    session = await client.update(live=False, watches=WATCHES)
    watches = {w["id"]: Watch(w["id"], "condition", w["condition"], w["cooldown_s"],
                              w["confirm_windows"], w["model"])
               for w in session["streamagent"]["watches"]}
    assert [(w.model, w.confirm_windows) for w in watches.values()] == [("tiny", 2), ("tiny", 1)]
    for i in range(FRAMES):
        picture = jpeg_bytes("EXIT" if i % 3 else "", size=(WIDTH + 8 * i, 64),
                             color=("white", "black", "gray")[i % 3])
        await client.send(image_event(data_url(picture), timestamp=i + 0.5))
        await asyncio.sleep(0.2)  # room to check most windows (a waiting one gives way)
    said = await firings(client)
    await client.close()

    engine: Any = runtime.pool.engines["tiny"]  # type: ignore[attr-defined]
    asked: dict[str, list[tuple[int, str]]] = {name: [] for name in watches}
    for request, answer in engine.answers:
        # every question was constrained, and every answer is one of the two
        assert request.output_schema == YES_NO and answer in ('"yes"', '"no"'), answer
        assert request.options["max_new_tokens"] == ANSWER_TOKENS and not request.tools
        (image,) = request.images
        name = next(n for n, w in watches.items() if w.target in request.prompt)
        asked[name].append(((image.shape[1] - WIDTH) // 8, answer))
    answers = [a for got in asked.values() for _, a in got]
    assert '"yes"' in answers and '"no"' in answers, answers  # both ways: the rule is tried
    for name, watch in watches.items():
        windows = [i for i, _ in asked[name]]
        assert windows == sorted(set(windows)) and len(windows) >= FRAMES // 2, windows
        fired = [m["window_start_ms"] for m in said if m["streamagent_watch"] == name]
        assert fired == expected(watch, asked[name]), (name, asked[name])
    assert {m["streamagent_watch"] for m in said} <= set(watches) and said
