"""MiniCPM-V 2.6 / MiniCPM-o 2.6 through their remote code, long audio, and Qwen2.5-Omni's fps.

The MiniCPM checkpoints are tiny stand-ins (``agent/tiny/minicpm/``) that keep the constraints
of the official remote code that the engine relies on; the first tests show that they do. The
rest go through the realtime endpoint with the engine as users run it."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from agent import ModelRequest, Turn, long_audio
from agent.config import Config, GenerationConfig, HandlerConfig, ModelConfig, ServerConfig
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.streamer import stream_file
from agent.testing import ServerThread, data_url, image_event, jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import Address
from plugins.hf import minicpm
from plugins.hf.families import FAMILIES
from plugins.hf.inputs import processor_inputs
from tests.helpers import Client, texts
from tests.media import flite_wav, read_wav

pytestmark = pytest.mark.slow
TOKENS = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {f: str(build(f, tmp_path_factory.mktemp(f.replace(".", "_"))))
            for f in ("minicpm-v", "minicpm-o")}


def model(family: str, source: str, handlers: list[str], **options: Any) -> ModelConfig:
    return ModelConfig(engine="transformers", family=family, source=source, handlers=handlers,
                       trust_remote_code=True, options=options,
                       generation=GenerationConfig(max_new_tokens=TOKENS,
                                                   min_new_tokens=TOKENS))


@pytest.fixture(scope="module")
def server(tiny: dict[str, str]) -> Iterator[tuple[Address, Runtime]]:
    models = {"v": model("minicpm-v", tiny["minicpm-v"], ["describe"]),
              "o": model("minicpm-o", tiny["minicpm-o"], ["describe", "listen"]),
              "hang": model("minicpm-o", tiny["minicpm-o"], ["describe"], token_timeout_s=1)}
    runtime = Runtime.build(Config(models=models), get_plugin_manager())
    with ServerThread(runtime) as address:
        yield address, runtime


def engine(runtime: Runtime, name: str) -> Any:
    return runtime.pool.engines[name]  # type: ignore[attr-defined]


# -- the stand-in keeps the real code's constraints ------------------------------------------

def test_plain_loading_fails_on_transformers_5_as_the_real_code_does(tiny: dict[str, str]) -> None:
    script = ("import sys\nfrom transformers import AutoModel\n"
              "for path in sys.argv[1:]:\n"
              "    try:\n        AutoModel.from_pretrained(path, trust_remote_code=True)\n"
              "    except Exception as exc:\n        print(type(exc).__name__, exc)\n"
              "    else:\n        print('loaded')\n")
    run = subprocess.run([sys.executable, "-c", script, tiny["minicpm-v"], tiny["minicpm-o"]],
                         capture_output=True, text=True, timeout=100, check=True)
    v, o = run.stdout.strip().splitlines()
    assert v.startswith("AttributeError") and "all_tied_weights_keys" in v  # no post_init()
    assert o.startswith("ImportError") and "LogitsWarper" in o  # gone from transformers 5.x


def test_minicpm_o_asserts_tts_packages_unless_init_tts_is_off(tiny: dict[str, str]) -> None:
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    minicpm.install_transformers_4_names()
    source = tiny["minicpm-o"]
    cls = minicpm.with_post_init(
        get_class_from_dynamic_module("modeling_tinyminicpmo.TinyMiniCPMO", source))
    with pytest.raises(AssertionError, match="vocos"):
        cls.from_pretrained(source)
    assert minicpm.load(source, family="minicpm-o").config.init_tts is False


@pytest.fixture(scope="module")
def loaded(tiny: dict[str, str]) -> dict[str, tuple[Any, Any]]:
    from transformers import AutoTokenizer

    return {f: (minicpm.load(p, family=f),
                AutoTokenizer.from_pretrained(p, trust_remote_code=True)) for f, p in tiny.items()}


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": [text]}


@pytest.mark.parametrize("family", ["minicpm-v", "minicpm-o"])
def test_chat_rules_of_the_real_code(loaded: dict[str, tuple[Any, Any]], family: str) -> None:
    m, tok = loaded[family]
    with pytest.raises(AssertionError, match="sampling=True"):
        m.chat(image=None, msgs=[user()], tokenizer=tok, sampling=False, stream=True)
    with pytest.raises(AssertionError, match="first msg should be user"):
        m.chat(image=None, msgs=[{"role": "assistant", "content": ["a"]}, user()],
               tokenizer=tok, max_new_tokens=2)
    system = [{"role": "system", "content": ["S"]}, user()]
    if family == "minicpm-v":  # V: roles are user and assistant only
        with pytest.raises(AssertionError):
            m.chat(image=None, msgs=system, tokenizer=tok, max_new_tokens=2)
    else:
        assert isinstance(m.chat(image=None, msgs=system, tokenizer=tok, max_new_tokens=2), str)


def test_minicpm_o_has_no_system_prompt_argument(loaded: dict[str, tuple[Any, Any]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    m, tok = loaded["minicpm-o"]
    prompts = spy_prompts(tok, monkeypatch)
    m.chat(image=None, msgs=[user()], tokenizer=tok, max_new_tokens=2, system_prompt="PIRATE")
    assert "PIRATE" not in prompts[-1]  # dropped without a word, as the real chat() does


def test_beam_search_is_one_delta(loaded: dict[str, tuple[Any, Any]]) -> None:
    from transformers import StoppingCriteriaList

    m, tok = loaded["minicpm-v"]
    chat = minicpm.MiniCPMChat(m, tok, "minicpm-v", frozenset({"image"}), 64 * 64)
    counted: list[int] = []
    options = {"max_new_tokens": 4, "min_new_tokens": 4, "num_beams": 2, "do_sample": False,
               "repetition_penalty": 1.0, "stopping_criteria": StoppingCriteriaList([])}
    image = np.zeros((32, 32, 3), np.uint8)
    out = list(chat.stream(ModelRequest(prompt="?", images=(image,)), options,
                           threading.Event(), counted.append))
    assert len(out) == 1 and isinstance(out[0], str)  # chat(sampling=False, stream=False)


def spy_prompts(tok: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    prompts: list[str] = []
    render = tok.apply_chat_template

    def spy(*args: Any, **kwargs: Any) -> Any:
        prompts.append(render(*args, **kwargs))
        return prompts[-1]

    monkeypatch.setattr(tok, "apply_chat_template", spy)
    return prompts


# -- the engine honours them, through the realtime endpoint ----------------------------------

async def ask(address: Address, name: str, *items: dict[str, Any],
              image: bool = True) -> list[dict[str, Any]]:
    client = await Client.connect(f"{address.ws}/v1/realtime?model={name}")
    for item in items:
        await client.send({"type": "conversation.item.create", "item": item})
    if image:
        await client.send(image_event(data_url(jpeg_bytes("hi")), text="What is this?"))
    await client.send({"type": "response.create"})
    got = await client.until("response.done", timeout=120)
    await client.close()
    return got


def message(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


@pytest.mark.parametrize("name", ["v", "o"])
async def test_instructions_and_a_history_that_starts_with_the_assistant(
        server: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    address, runtime = server
    prompts = spy_prompts(engine(runtime, name).tokenizer, monkeypatch)
    got = await ask(address, name, message("system", "Talk like a pirate."),
                    message("assistant", "Ahoy."), message("user", "Where are we?"))
    assert got[-1]["response"]["status"] == "incomplete", got[-3:]  # min == max tokens
    assert texts(got)
    prompt = prompts[-1]
    assert prompt.startswith("<|im_start|>system\nTalk like a pirate.<|im_end|>\n")
    assert "Ahoy." not in prompt  # trimmed: the first turn is the user's
    assert prompt.index("Where are we?") < prompt.index("What is this?")


@pytest.mark.parametrize("name", ["v", "o"])
async def test_greedy_by_default(server: Any, name: str) -> None:
    address, runtime = server
    before = engine(runtime, name).tokens_generated
    got = await ask(address, name)
    first = "".join(texts(got))
    again = "".join(texts(await ask(address, name)))
    assert first and first == again  # sampling at the chat() defaults would differ
    assert engine(runtime, name).tokens_generated - before == 2 * TOKENS  # tokens, not pieces
    assert got[-1]["response"]["status"] == "incomplete"  # min_new_tokens == max_new_tokens


async def test_generate_thread_failure_fails_the_response_not_the_session(
        server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    address, runtime = server
    llm = engine(runtime, "o").model.llm

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(llm, "forward", out_of_memory)
    got = await ask(address, "o")
    assert got[-1]["response"]["status"] == "failed"
    assert any("out of memory" in e["error"]["message"] for e in got if e["type"] == "error")
    monkeypatch.undo()
    assert (await ask(address, "o"))[-1]["response"]["status"] == "incomplete"


async def test_a_silent_generate_thread_times_out(server: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    address, runtime = server
    llm = engine(runtime, "hang").model.llm
    release = threading.Event()
    forward = llm.forward

    def stuck(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)
        return forward(*args, **kwargs)

    monkeypatch.setattr(llm, "forward", stuck)
    try:
        got = await ask(address, "hang")
    finally:
        release.set()
    assert got[-1]["response"]["status"] == "failed"
    assert any("no token" in e["error"]["message"] for e in got if e["type"] == "error")


async def test_minicpm_o_hears_an_utterance_from_listen(server: Any, tmp_path: Path) -> None:
    address, runtime = server
    frames = record_audio_frames(engine(runtime, "o").model)
    wav = flite_wav(tmp_path / "s.wav", "hello world. this is a test of speech recognition")
    samples, rate = read_wav(wav)
    seconds = samples.size / rate
    # within the session's audio burst: sent at 50x, timed by its media timestamps
    replies, _ = await stream_file(str(wav), f"{address.ws}/v1/realtime?model=o",
                                   handlers=["listen"], idle_s=2, speed=50,
                                   expect=1)
    assert [r.handler for r in replies] == ["listen"]
    assert replies[0].status == "incomplete"  # min_new_tokens == max_new_tokens
    assert replies[0].text
    # 25 audio tokens a second: the utterance reached the audio encoder, not only the prompt
    assert 0.5 * seconds * 25 < sum(frames) <= seconds * 25 + 25


def record_audio_frames(m: Any) -> list[int]:
    """Tokens from each 30 s part the stand-in's audio encoder took (25 a second)."""
    frames: list[int] = []
    m.audio_avg_pooler.register_forward_hook(
        lambda mod, args, out: frames.append(out.shape[-1]))
    return frames


# -- long audio: split for the encoder window, not cut -----------------------------------------

def test_split_is_even_and_keeps_every_sample() -> None:
    audio = np.arange(65 * 16000, dtype=np.float32)
    parts = long_audio.split(audio, 30 * 16000)
    assert len(parts) == 3 and {p.size for p in parts} == {346667, 346666}
    assert np.array_equal(np.concatenate(parts), audio)
    short = audio[:16000]
    assert [p is short for p in long_audio.split(short, 30 * 16000)] == [True]
    assert [p is audio for p in long_audio.split(audio, None)] == [True]


@pytest.fixture(scope="module")
def long_server(tiny: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Address, Runtime]]:
    qwen = str(build("qwen2-audio", tmp_path_factory.mktemp("qwen2_audio")))
    models = {"o": model("minicpm-o", tiny["minicpm-o"], ["listen"]),
              "qa": ModelConfig(engine="transformers", family="qwen2-audio", source=qwen,
                                handlers=["listen"], generation=GenerationConfig(
                                    max_new_tokens=TOKENS, min_new_tokens=TOKENS))}
    config = Config(models=models, handlers={"listen": HandlerConfig(options={"chunk_s": 40})},
                    server=ServerConfig(max_audio_s_per_s=100))  # the file streams at 50x
    runtime = Runtime.build(config, get_plugin_manager())
    with ServerThread(runtime) as address:
        yield address, runtime


def long_speech(path: Path, seconds: float) -> Path:
    speech, rate = read_wav(flite_wav(path.with_suffix(".one.wav"),
                                      "the quick brown fox jumps over the lazy dog"))
    pause = np.zeros(rate // 2, np.float32)
    reps = int(seconds * rate // (speech.size + pause.size)) + 1
    audio = np.tile(np.concatenate([speech, pause]), reps)[: int(seconds * rate)]
    soundfile.write(path, audio, rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize("name", ["qa", "o"])
async def test_a_40_s_utterance_reaches_the_model_whole(long_server: Any, name: str,
                                                       tmp_path: Path) -> None:
    address, runtime = long_server
    m = engine(runtime, name).model
    seen: list[int] = []
    if name == "qa":  # Whisper features: 30 s (3000 frames) per clip, 100 frames a second
        m.model.audio_tower.register_forward_pre_hook(
            lambda mod, args: seen.append(int(args[0].shape[0])))
    else:
        seen = record_audio_frames(m)
    wav = long_speech(tmp_path / "long.wav", 40)
    replies, _ = await stream_file(str(wav), f"{address.ws}/v1/realtime?model={name}",
                                   handlers=["listen"], idle_s=2, speed=50,
                                   expect=1)
    assert [r.status for r in replies] == ["incomplete"]  # min_new_tokens == max_new_tokens
    if name == "qa":
        assert seen == [2]  # two clips of 20 s in one request (one clip would cut it at 30 s)
    else:
        assert seen == [750, 250]  # MiniCPM-o's processor: a 30 s part and the 10 s rest


# -- Qwen2.5-Omni gets the video's real fps ----------------------------------------------------

@pytest.fixture(scope="module")
def omni_processor(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(build("qwen2.5-omni", tmp_path_factory.mktemp("omni")))


@pytest.mark.parametrize(("frames", "fps", "expected"), [(4, 1.0, 1.0), (8, 4.0, 4.0),
                                                         (128, 8.0, 4.0)])
def test_omni_video_fps_reaches_the_processor(omni_processor: Any, frames: int, fps: float,
                                              expected: float) -> None:
    video = tuple(np.full((56, 56, 3), i, np.uint8) for i in range(frames))
    request = ModelRequest(prompt="?", video=video, video_fps=fps,
                           history=(Turn("user", "x"),))
    omni = next(f for f in FAMILIES if f.name == "qwen2.5-omni")
    inputs = processor_inputs(omni_processor, request, omni, frozenset({"video"}), 56 * 56)
    # seconds per temporal grid step = temporal_patch_size (2) / fps; 128 frames are
    # subsampled to 64 over the same 16 s, so 4 fps
    assert [float(s) for s in inputs["video_second_per_grid"]] == [2 / expected]

