"""A session's KV cache kept between its calls on the transformers engine
(plugins/hf/kv_reuse.py): each call of a growing timeline computes only what is new and
answers as the full prompt computed afresh does (the same tokens, the same logits), a frame
that differs is never served from the cache, and the caches stay within their bound, one per
session. Tiny random-weight checkpoints of the real architectures."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.config import GenerationConfig, ModelConfig
from agent.engine import Entry, ModelRequest
from agent.parts import Usage
from agent.timeline import stamp
from agent.tiny import build
from agent.token_pieces import TokenPieces
from plugins.hf.attention import GROUPED_SDPA
from plugins.hf.engine import TransformersEngine
from plugins.hf.inputs import processor_args, processor_inputs
from plugins.hf.kv_reuse import Reuse, SessionCaches
from plugins.hf.partial_inputs import partial_inputs
from plugins.hf.positions import full_positions, prefix_positions

pytestmark = pytest.mark.slow
FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
GREEDY = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
RNG = np.random.default_rng(0)
FRAMES = [RNG.integers(0, 255, (56, 84, 3), dtype=np.uint8) for _ in range(5)]
OTHER = RNG.integers(0, 255, (56, 84, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[TransformersEngine]:
    family: str = request.param
    source = build(family, tmp_path_factory.mktemp(family.replace(".", "_")))
    yield loaded(source)


def loaded(source: Path) -> TransformersEngine:
    engine = TransformersEngine("tiny", ModelConfig(
        engine="transformers", source=str(source), handlers=["describe"],
        generation=GenerationConfig(max_new_tokens=4, min_new_tokens=4)))
    engine.load()
    return engine


def timeline(frames: list[Any], prompt: str = "Describe.", session: str = "s") -> ModelRequest:
    """A session's timeline as agent/timeline.py renders it: each frame with its time, each
    second's live exchange after it, then ``prompt``."""
    entries: list[Entry] = []
    for t, frame in enumerate(frames):
        key = "other" if frame is OTHER else f"frame{t}"
        entries += [Entry("user", stamp(t)), Entry("user", image=frame, key=key)]
        if t < len(frames) - 1:
            entries += [Entry("user", "Describe."), Entry("assistant", f"A view at {t}.")]
    return ModelRequest(prompt=prompt, sequence=tuple(entries), session=session)


def run(engine: TransformersEngine, caches: SessionCaches,
        request: ModelRequest) -> tuple[Any, Any, Reuse]:
    """The request answered greedily from the session's cache, and afresh: each's output
    (sequences and scores), and the reuse."""
    inputs = processor_inputs(engine.processor, request, engine.family,
                              engine.modalities or frozenset(), engine.max_pixels,
                              engine.prompter)
    fresh = engine.model.generate(**inputs, **GREEDY, output_scores=True,
                                  return_dict_in_generate=True)
    mrope = "image_grid_thw" in inputs
    if mrope:  # the whole prompt numbered afresh, and the delta decoding goes on from
        expected = full_positions(engine.model, inputs)
        deltas = engine.model.model.rope_deltas.clone()
    engine.caches, kept = caches, engine.caches
    try:
        _, reuse = engine.prepared(request, GREEDY)
    finally:
        engine.caches = kept
    assert reuse is not None
    if mrope:  # numbered from the cached prefix on: the same
        assert torch.equal(reuse.inputs["position_ids"], expected)
        assert torch.equal(engine.model.model.rope_deltas, deltas)
    out = engine.model.generate(**reuse.inputs, **GREEDY, output_scores=True,
                                return_dict_in_generate=True)
    reuse.keep(out)
    return fresh, out, reuse


def assert_same(fresh: Any, reused: Any) -> None:
    """The same tokens, and logits within float error (positions numbered wrong by one
    scheme or another differ by 1e-3 on these checkpoints)."""
    assert torch.equal(fresh.sequences, reused.sequences)
    for a, b in zip(fresh.scores, reused.scores, strict=True):
        torch.testing.assert_close(a.nan_to_num(0, 0, 0), b.nan_to_num(0, 0, 0),
                                   atol=1e-5, rtol=0)


def test_a_growing_timeline_answers_as_computed_afresh(engine: TransformersEngine) -> None:
    """Frames appended each second, then a question: from the second call on, the cache
    serves the whole prompt of the call before, and the answer is the full path's."""
    caches = SessionCaches(1 << 30)
    cached = []
    for seconds in range(1, len(FRAMES) + 1):
        fresh, reused, reuse = run(engine, caches, timeline(FRAMES[:seconds]))
        assert_same(fresh, reused)
        cached.append((reuse.cached, int(fresh.sequences.shape[1]) - GREEDY["max_new_tokens"]))
    fresh, reused, reuse = run(engine, caches, timeline(FRAMES, "What changed?"))
    assert_same(fresh, reused)
    assert cached[0][0] == 0
    assert all(before <= hit < prompt for (_, before), (hit, prompt)
               in zip(cached, cached[1:], strict=False)), cached
    assert reuse.cached > cached[-1][1] - 20  # all but the question
    assert "pixel_values" not in reuse.inputs  # every picture came from the cache
    # through plugins/hf/attention.py: grouped heads unrepeated, a cache appended in place
    assert engine.model.config._attn_implementation == GROUPED_SDPA
    assert all(hasattr(layer, "room") for layer in reuse.inputs["past_key_values"].layers)


def test_only_the_pictures_past_the_cache_are_prepared(engine: TransformersEngine) -> None:
    """The processor's own inputs, less the pixels of the pictures the cache holds: the
    same ids, token types and grids, and the same pixels of the others."""
    request = timeline(FRAMES)
    text, kwargs = processor_args(engine.processor, request, engine.family,
                                  engine.modalities or frozenset(), engine.max_pixels,
                                  engine.prompter)
    full = engine.processor(text=[text], return_tensors="pt", **kwargs)
    grid = full["image_grid_thw"]
    for known in (1, len(FRAMES) - 1, len(FRAMES)):
        part = partial_inputs(engine.processor, text, kwargs, {}, grid[:known])
        assert set(part) | {"pixel_values"} == set(full)
        for name in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
            assert torch.equal(part[name], full[name]), name
        rows = int(grid[:known].prod(-1).sum())
        if known < len(FRAMES):
            assert torch.equal(part["pixel_values"], full["pixel_values"][rows:])
        else:
            assert "pixel_values" not in part
    caches = SessionCaches(1 << 30)
    run(engine, caches, timeline(FRAMES[:3]))
    _, _, reuse = run(engine, caches, timeline(FRAMES[:4]))
    assert torch.equal(reuse.inputs["image_grid_thw"], grid[3:4])  # the fourth frame alone
    assert reuse.inputs["pixel_values"].shape[0] == int(grid[3].prod())


def test_a_prompt_is_tokenized_piece_by_piece(engine: TransformersEngine) -> None:
    """A growing timeline's ids, message by message with the messages seen before
    remembered, are the processor's own for the whole; past the first call, each call
    tokenizes the same few new messages, however long the timeline."""
    batches: list[list[str]] = []

    def tokenizer(texts: list[str], **kwargs: Any) -> Any:
        batches.append(list(texts))
        return engine.tokenizer(texts, **kwargs)

    pieces, new, held = TokenPieces(tokenizer), [], []
    for seconds in range(1, len(FRAMES) + 1):
        text, kwargs = processor_args(engine.processor, timeline(FRAMES[:seconds]),
                                      engine.family, engine.modalities or frozenset(),
                                      engine.max_pixels, engine.prompter)
        full = engine.processor(text=[text], return_tensors="pt", **kwargs)
        batches.clear()
        part = partial_inputs(engine.processor, text, kwargs, {},
                              full["image_grid_thw"][:seconds], pieces)
        for name in ("input_ids", "attention_mask", "mm_token_type_ids"):
            assert torch.equal(part[name], full[name]), name
        new.append(len(batches[0]))
        held.append(text.count(pieces.marker))
    assert pieces.checked and len(set(new[1:])) == 1, new
    assert new[-1] < held[-1] // 2, (new, held)


def test_a_frame_that_differs_is_computed_again(engine: TransformersEngine) -> None:
    """The same prompt with the second frame replaced (the same token ids): the cache serves
    up to that frame, not into it, and the answer is the full path's."""
    caches = SessionCaches(1 << 30)
    run(engine, caches, timeline(FRAMES[:3]))
    request = timeline([FRAMES[0], OTHER, FRAMES[2]])
    inputs = processor_inputs(engine.processor, request, engine.family,
                              engine.modalities or frozenset(), engine.max_pixels,
                              engine.prompter)
    pads = (inputs["input_ids"][0] == engine.model.config.image_token_id).nonzero().flatten()
    second_frame = int(pads[len(pads) // 3])
    fresh, reused, reuse = run(engine, caches, request)
    assert_same(fresh, reused)
    assert 0 < reuse.cached <= second_frame
    assert reuse.inputs["image_grid_thw"].shape[0] == 2  # prepared again from the second on


def test_the_engine_reports_cached_tokens_and_answers_the_same(
        engine: TransformersEngine) -> None:
    """Through ``generate``: a session's calls report the tokens its cache served; a call
    with no session keeps nothing and reports none, with the same answers."""
    answers: dict[str, list[tuple[str, Usage]]] = {}
    for session in ("live", ""):
        for seconds in (1, 2, 3):
            parts = list(engine.generate(timeline(FRAMES[:seconds], session=session),
                                         threading.Event()))
            usage = parts[-1]
            assert isinstance(usage, Usage)
            answers.setdefault(session, []).append(
                ("".join(p for p in parts if isinstance(p, str)), usage))
    assert [a for a, _ in answers["live"]] == [a for a, _ in answers[""]]
    assert [u.cached_tokens for _, u in answers[""]] == [None] * 3
    cached = [u.cached_tokens or 0 for _, u in answers["live"]]
    assert cached[0] == 0 and all(c > 0 for c in cached[1:])
    assert engine.caches.sessions() == ["live"]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    return loaded(build("qwen2.5-vl", tmp_path_factory.mktemp("qwen")))


def text_checkpoint(out: Path, tiny: Path) -> Path:
    """A tiny random Qwen2 text model with the tokenizer and chat template of ``tiny``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny / name, out / name)
    settings = json.loads((out / "tokenizer_config.json").read_text())
    settings.pop("processor_class", None)  # a tokenizer alone
    (out / "tokenizer_config.json").write_text(json.dumps(settings))
    vocab = len(json.loads((tiny / "tokenizer.json").read_text())["model"]["vocab"]) + 64
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    Qwen2ForCausalLM(config).save_pretrained(out)  # type: ignore[no-untyped-call]
    return out


def test_a_text_model_reuses_its_prompt(tmp_path: Path, qwen: TransformersEngine) -> None:
    """A plain text model (1-D positions, counted from the cache): the same answers."""
    engine = loaded(text_checkpoint(tmp_path, Path(str(qwen.config.source))))
    caches, entries, cached = SessionCaches(1 << 30), [], []
    for t in range(3):
        entries += [Entry("user", f"{stamp(t)} a line of text, number {t}.")]
        fresh, reused, reuse = run(engine, caches, ModelRequest(
            prompt="Describe.", sequence=tuple(entries), session="s"))
        assert_same(fresh, reused)
        cached.append(reuse.cached)
        entries += [Entry("user", "Describe."), Entry("assistant", f"Line {t}.")]
    assert cached[0] == 0 and all(c > 0 for c in cached[1:])


def test_past_the_bound_the_least_recent_session_goes(qwen: TransformersEngine) -> None:
    """Room for two sessions' caches: a third drops the first, whose next call computes
    afresh; no session is served another's cache, even for the same prompt."""
    caches = SessionCaches(1 << 30)
    *_, reuse = run(qwen, caches, timeline(FRAMES[:2], session="a"))
    one = caches.size
    caches.max_bytes = int(2.5 * one)
    for session in ("b", "c"):
        *_, reuse = run(qwen, caches, timeline(FRAMES[:2], session=session))
        assert reuse.cached == 0  # a's cache held the same prompt
    assert caches.sessions() == ["b", "c"] and caches.size <= caches.max_bytes
    *_, reuse = run(qwen, caches, timeline(FRAMES[:3], session="a"))
    assert reuse.cached == 0 and caches.sessions() == ["c", "a"]
    *_, reuse = run(qwen, caches, timeline(FRAMES[:3], session="c"))
    assert reuse.cached > 0


def test_a_session_cache_is_taken_while_its_call_runs(qwen: TransformersEngine) -> None:
    """Two calls of one session at once: the second computes afresh; a cache larger than the
    bound is not kept; beams and a video take the full path."""
    caches = SessionCaches(1 << 30)
    run(qwen, caches, timeline(FRAMES[:1]))
    request = timeline(FRAMES[:2])
    inputs = processor_inputs(qwen.processor, request, qwen.family, qwen.modalities or
                              frozenset(), qwen.max_pixels, qwen.prompter)
    first = caches.prepare(qwen.model, request, inputs, None, GREEDY)
    second = caches.prepare(qwen.model, request, inputs, None, GREEDY)
    assert first is not None and second is not None
    assert first.cached > 0 and second.cached == 0
    assert caches.prepare(qwen.model, request, inputs, None, {**GREEDY, "num_beams": 2}) is None
    video = {**inputs, "pixel_values_videos": inputs["pixel_values"]}
    assert caches.prepare(qwen.model, request, video, None, GREEDY) is None
    small = SessionCaches(1)
    *_, reuse = run(qwen, small, timeline(FRAMES[:1]))
    assert small.sessions() == []


def test_on_ray_a_session_sticks_to_the_replica_holding_its_cache() -> None:
    """``session_affinity`` by default: on where a replica keeps a session's cache."""
    from agent.config import ModelConfig

    assert ModelConfig(engine="transformers").sticky()
    assert not ModelConfig(engine="transformers", options={"session_cache_mb": 0}).sticky()
    assert ModelConfig(engine="vllm").sticky()
    assert not ModelConfig(engine="vllm", options={"enable_prefix_caching": False}).sticky()
    assert not ModelConfig(engine="rapidocr").sticky()
    assert not ModelConfig(engine="transformers", session_affinity=False).sticky()


def test_the_answers_positions_go_on_as_text(engine: TransformersEngine) -> None:
    """A cache holds its prompt and answer: the answer's positions, from the prompt's, are
    those of the same tokens numbered as text of a longer prompt."""
    inputs = processor_inputs(engine.processor, timeline(FRAMES[:2]), engine.family,
                              engine.modalities or frozenset(), engine.max_pixels,
                              engine.prompter)
    answer = torch.tensor([[11, 12, 13, 14]])
    longer = {"input_ids": torch.cat([inputs["input_ids"], answer], dim=1),
              "attention_mask": torch.ones(1, inputs["input_ids"].shape[1] + 4, dtype=torch.long),
              "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"],
                                              torch.zeros_like(answer)], dim=1),
              "image_grid_thw": inputs["image_grid_thw"]}
    length = int(inputs["input_ids"].shape[1])
    expected = full_positions(engine.model, longer)
    got = prefix_positions(full_positions(engine.model, inputs), length + 3)
    assert torch.equal(got, expected[..., :length + 3])
