"""Typed engine and handler options: a typo or a wrong type fails at start-up, naming the key
and the nearest valid one; the documented options are accepted and reach the plugin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agent.config import Config, HandlerConfig, ModelConfig
from agent.errors import ConfigError
from agent.options import Options, check_options
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def build(config: Config) -> Runtime:
    return Runtime.build(config, get_plugin_manager())


def test_a_misspelt_handler_option_names_the_nearest() -> None:
    config = Config(handlers={"speech": HandlerConfig(options={"min_silense_s": 0.3})})
    with pytest.raises(ConfigError) as info:
        build(config)
    assert str(info.value).startswith(
        "handlers.speech.options: unknown option 'min_silense_s'; did you mean 'min_silence_s'?")
    assert "max_utterance_s" in str(info.value)  # the valid ones listed


def test_a_misspelt_engine_option_names_the_nearest() -> None:
    config = Config(models={"ocr": ModelConfig(engine="rapidocr", options={"min_scor": 0.7})})
    with pytest.raises(ConfigError, match="models.ocr.options: unknown option 'min_scor'; "
                                          "did you mean 'min_score'"):
        build(config)


@pytest.mark.parametrize(("options", "message"), [
    ({"det_limit_type": "middle"}, "models.ocr.options.det_limit_type: Input should be 'max' "
                                   "or 'min'"),
    ({"threads": "many"}, "models.ocr.options.threads: Input should be a valid integer"),
    ({"min_score": 2}, "models.ocr.options.min_score: Input should be less than or equal to 1"),
])
def test_a_wrong_value_names_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(Config(models={"ocr": ModelConfig(engine="rapidocr", options=options)}))
    assert str(info.value).startswith(message), info.value


def test_a_handler_that_takes_no_options_refuses_any() -> None:
    config = Config.model_validate({"handlers": {"faces": {"options": {"beam": 3}}}})
    with pytest.raises(ConfigError, match="unknown option 'beam'; options: none"):
        build(config)


def test_an_engine_option_out_of_its_choices_is_refused() -> None:
    config = Config(models={"asr": ModelConfig(engine="pocketsphinx", options={"beam": 3})})
    with pytest.raises(ConfigError, match="unknown option 'beam'; options: nice, search"):
        build(config)
    config = Config(models={"asr": ModelConfig(engine="pocketsphinx",
                                               options={"search": "quick"})})
    with pytest.raises(ConfigError, match="models.asr.options.search: .*'accurate' or 'fast'"):
        build(config)


def test_the_documented_options_are_accepted_and_reach_the_plugin() -> None:
    """docs/config.md's example, less its GPU model: its ocr and speech options."""
    text = (ROOT / "docs" / "config.md").read_text()
    example = yaml.safe_load(text.split("```yaml", 1)[1].split("```", 1)[0])
    del example["models"]["qwen"], example["profiles"]
    runtime = build(Config.model_validate(example))
    engine = runtime.pool.engines["ocr"]  # type: ignore[attr-defined]
    engine.load()
    assert engine.min_score == 0.6 and engine.params["Det.limit_side_len"] == 480
    handler = runtime.make_handler("speech", "s1")
    assert handler.segmenter.min_silence == 15  # type: ignore[attr-defined]  # 0.5 s of 32 ms


def test_a_plugin_without_an_options_model_takes_any_keys() -> None:
    check_options(None, {"anything": 1}, "models.x.options")

    class Two(Options):
        a: int = 1

    check_options(Two, {"a": 2}, "models.x.options")
    assert Two.of({}).a == 1


@pytest.mark.parametrize(("engine", "options", "words"), [
    ("transformers", {"max_pixel": 1000}, "unknown option 'max_pixel'; did you mean 'max_pixels'"),
    ("transformers", {"quantization": "q3"}, "models.m.options.quantization"),
    ("vllm", {"gpu_memory_utilisation": 0.8},
     "unknown option 'gpu_memory_utilisation'; did you mean 'gpu_memory_utilization'"),
    ("vllm", {"max_model_len": "long"}, "models.m.options.max_model_len"),
])
def test_the_llm_engines_options_are_typed(engine: str, options: dict[str, object],
                                           words: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")  # a checkpoint directory, never loaded
    model = ModelConfig(engine=engine, source=str(tmp_path), options=options)
    with pytest.raises(ConfigError, match=re.escape(words)):
        Runtime.build(Config(models={"m": model}), get_plugin_manager())
