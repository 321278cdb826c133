"""Quantized weights: a tiny Qwen2-VL quantized by bitsandbytes while it loads (4-bit NF4 and
8-bit, on this CPU), saved quantized and served again with no option, and what vLLM refuses
before its start-up."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoConfig

from agent.config import GenerationConfig, ModelConfig
from agent.engine import ModelRequest
from agent.errors import ConfigError
from agent.parts import TextDelta, Usage
from agent.tiny import build
from plugins.hf.engine import TransformersEngine
from plugins.vllm_engine import refusal

TOKENS = 5


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("qwen2-vl", tmp_path_factory.mktemp("qwen2vl"))


def model(source: Path, **options: Any) -> ModelConfig:
    return ModelConfig(engine="transformers", source=str(source), options=options,
                       generation=GenerationConfig(max_new_tokens=TOKENS, min_new_tokens=TOKENS))


async def answer(engine: TransformersEngine) -> list[Any]:
    picture = np.full((48, 64, 3), 200, np.uint8)
    parts = [p async for p in engine.stream(ModelRequest(prompt="What is it?",
                                                          images=(picture,)))]
    assert any(isinstance(p, TextDelta) for p in parts)
    usage = parts[-1]
    assert isinstance(usage, Usage) and usage.completion_tokens == TOKENS
    return parts


def save(engine: TransformersEngine, source: Path, to: Path) -> Path:
    """The quantized weights, with the processor's files of ``source`` beside them."""
    engine.model.save_pretrained(to)
    for extra in source.iterdir():
        if not (to / extra.name).exists():
            shutil.copy(extra, to / extra.name)
    return to


async def footprint(engine: TransformersEngine) -> int:
    return int(engine.model.get_memory_footprint())


@pytest.fixture(scope="module")
def full(source: Path) -> int:
    """The checkpoint's footprint with its full weights."""
    from transformers import AutoModelForImageTextToText

    return int(AutoModelForImageTextToText.from_pretrained(source).get_memory_footprint())


@pytest.mark.parametrize("method", ["nf4", "int8"])
async def test_quantized_while_loading_serves_in_less_memory(source: Path, full: int,
                                                             method: str,
                                                             tmp_path: Path) -> None:
    engine = TransformersEngine("q", model(source, quantization=method))
    await engine.start()
    assert engine.model.hf_quantizer is not None
    await answer(engine)
    assert await footprint(engine) < full
    # saved quantized, it serves again as its config says, with no option
    saved = save(engine, source, tmp_path / "saved")
    again = TransformersEngine("again", model(saved))
    await again.start()
    assert again.model.hf_quantizer is not None
    await answer(again)
    # vLLM on this CPU loads no bitsandbytes checkpoint: said before its start-up
    why = refusal(AutoConfig.from_pretrained(saved))
    assert why is not None and "bitsandbytes" in why
    with pytest.raises(ConfigError, match="already quantized"):
        await TransformersEngine("twice", model(saved, quantization="nf4")).start()


async def test_an_unknown_method_is_named(source: Path) -> None:
    with pytest.raises(ConfigError, match="models.q.options.quantization: Input should be"):
        TransformersEngine("q", model(source, quantization="q3"))
    assert refusal(AutoConfig.from_pretrained(source)) is None
