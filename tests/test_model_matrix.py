"""The model matrix: architecture x engine x modality, on tiny random-weight checkpoints of the
real architectures, through the realtime endpoint and (with the openai SDK) chat completions.

Each (architecture, engine) is loaded once for the module. No family is named anywhere: every
checkpoint goes through the generic path (or the family that claims its ``model_type``), as a
user's ``--source`` would. Output is gibberish: the tests count tokens and check statuses.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from PIL import Image

from agent.config import Config, GenerationConfig, HandlerConfig, ModelConfig, ProfileConfig
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import ServerThread, data_url, image_event, jpeg_bytes
from agent.tiny import build
from agent.uvicorn_server import Address
from tests.helpers import Client, ask_to_talk, texts
from tests.media import flite_wav
from tests.test_vllm import wav_base64

pytestmark = pytest.mark.slow
TRF, VLLM = "transformers", "vllm"
IMAGE, VIDEO, AUDIO = "image", "video", "audio"


@dataclass(frozen=True)
class Arch:
    takes: frozenset[str]
    engines: tuple[str, ...]
    remote_code: bool = False


ARCHS = {
    "qwen2-vl": Arch(frozenset({IMAGE, VIDEO}), (TRF,)),  # vLLM: tests/test_vllm.py's server
    "qwen2.5-vl": Arch(frozenset({IMAGE, VIDEO}), (TRF, VLLM)),
    "qwen2-audio": Arch(frozenset({AUDIO}), (TRF, VLLM)),
    "qwen2.5-omni": Arch(frozenset({IMAGE, VIDEO, AUDIO}), (TRF,)),  # vLLM: as Qwen3-Omni
    "qwen3-vl": Arch(frozenset({IMAGE, VIDEO}), (TRF, VLLM)),
    # vLLM 0.32 with transformers 5.19 serves neither: its Qwen3-Omni path calls the
    # processor's _get_num_multimodal_tokens (absent from Qwen3OmniMoeProcessor), and its
    # Qwen3-ASR config calls rope_config_validation (removed from transformers 5.19); the
    # engine's start-up fails with that one line (docs/models.md).
    "qwen3-omni": Arch(frozenset({IMAGE, VIDEO, AUDIO}), (TRF,)),
    "qwen3-asr": Arch(frozenset({AUDIO}), (TRF,)),
    "llava-onevision": Arch(frozenset({IMAGE, VIDEO}), (TRF, VLLM)),
    "minicpm-v4.6": Arch(frozenset({IMAGE, VIDEO}), (TRF, VLLM)),
    # MiniCPM-V / MiniCPM-o 2.6: one remote-code checkpoint for both engines, as the real ones
    # (transformers: its chat(); vLLM: its native MiniCPMV / MiniCPMO)
    "minicpm-v": Arch(frozenset({IMAGE, VIDEO}), (TRF, VLLM), remote_code=True),
    "minicpm-o": Arch(frozenset({IMAGE, VIDEO, AUDIO}), (TRF, VLLM), remote_code=True),
}
CASES = [(a, e) for a, arch in ARCHS.items() for e in arch.engines]
TOKENS = 6
"""Each answer's length (the model's min and max); a longer one is asked for to cancel."""
HANDLERS = {IMAGE: "describe", VIDEO: "video", AUDIO: "listen"}


@dataclass
class Served:
    arch: str
    engine_kind: str
    takes: frozenset[str]
    address: Address
    runtime: Runtime

    def engine(self, name: str = "tiny") -> Any:
        return self.runtime.pool.engines[name]  # type: ignore[attr-defined]

    @property
    def tokens(self) -> int:
        return TOKENS

    def generated(self, before: int, at_most: bool = False) -> None:
        """The engine generated the configured count since ``before``; ``at_most``: a chat
        completion, which a model's name answers through each of its handlers (one per
        modality it takes, a profile of its name), each generation at most the count."""
        done = self.engine().tokens_generated - before
        if at_most:
            assert 0 < done <= self.tokens * len(self.takes)
        else:
            assert done == self.tokens


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("few-shot") / "red.png"
    Image.new("RGB", (64, 48), "red").save(path)
    return path


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{e}" for a, e in CASES])
def served(request: pytest.FixtureRequest, checkpoints: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory, example: Path) -> Iterator[Served]:
    arch, kind = request.param
    spec = ARCHS[arch]
    if arch not in checkpoints:
        checkpoints[arch] = build(arch, tmp_path_factory.mktemp(arch.replace(".", "_")))
    source = str(checkpoints[arch])
    handlers = [HANDLERS[m] for m in (IMAGE, VIDEO, AUDIO) if m in spec.takes]
    tokens = TOKENS
    options = {"kv_cache_memory_bytes": 64 << 20} if kind == VLLM else {}
    models = {"tiny": ModelConfig(  # no family: each is found from the model_type
        engine=kind, source=source, handlers=handlers,
        trust_remote_code=spec.remote_code, options=options,
        generation=GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens))}
    if kind == TRF:  # a model that talks for long, to cancel
        models["slow"] = models["tiny"].model_copy(update={
            "handlers": handlers[-1:],
            "generation": GenerationConfig(max_new_tokens=2000, min_new_tokens=2000)})
    few_shot = {"describe": HandlerConfig(options={
        "few_shot": [{"image": str(example), "answer": "Red."}]})}
    config = Config(models=models, handlers=few_shot if IMAGE in spec.takes else {})
    runtime = Runtime.build(config, get_plugin_manager())
    with ServerThread(runtime) as address:
        yield Served(arch, kind, spec.takes, address, runtime)


def needs(served: Served, modality: str) -> None:
    if modality not in served.takes:
        pytest.skip(f"{served.arch} takes no {modality}")


async def respond(client: Client, handlers: list[str]) -> list[dict[str, Any]]:
    await client.update(handlers=handlers)
    await client.send({"type": "response.create"})
    got = await client.until("response.done", timeout=180)
    errors = [e for e in got if e["type"] == "error"]
    # min_new_tokens == max_new_tokens: the token limit always stops it
    assert got[-1]["response"]["status"] == "incomplete", errors
    return got


def test_modalities_are_learned_from_the_checkpoint(served: Served) -> None:
    assert served.engine().modalities == served.takes
    for modality, handler in HANDLERS.items():
        profile = ProfileConfig(handlers=[handler], models={handler: "tiny"})
        problem = served.runtime.modality_problem([handler], profile)
        if modality in served.takes:
            assert problem is None
        else:
            assert problem is not None and f"handler {handler!r}" in problem
            assert "model 'tiny'" in problem


async def test_realtime_image_with_few_shot_examples(served: Served) -> None:
    needs(served, IMAGE)
    client = await Client.connect(served.address.realtime)
    before = served.engine().tokens_generated
    await client.send(image_event(data_url(jpeg_bytes("hi")), text="What is this?"))
    got = await respond(client, ["describe"])
    assert texts(got)
    served.generated(before)
    await client.close()


async def test_realtime_video_from_the_frames_sent(served: Served) -> None:
    needs(served, VIDEO)
    client = await Client.connect(served.address.realtime)
    for i, word in enumerate(["ONE", "TWO", "THREE", "FOUR"]):
        await client.send(image_event(data_url(jpeg_bytes(word)), timestamp=float(i)))
    before = served.engine().tokens_generated
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "What happened?"}]}})
    await respond(client, ["video"])
    served.generated(before)
    await client.close()


async def test_realtime_audio_an_utterance_from_listen(served: Served,
                                                       tmp_path: Path) -> None:
    from agent.streamer import stream_file

    needs(served, AUDIO)
    wav = flite_wav(tmp_path / "s.wav", "hello world. this is a test of speech recognition")
    before = served.engine().tokens_generated
    # 3.5 s of speech, within the session's audio burst: sent at 50x (its media timestamps
    # keep its timing), so the test waits for the model, not for the clock
    replies, _ = await stream_file(str(wav), served.address.realtime, handlers=["listen"],
                                   idle_s=2, speed=50, expect=1)
    assert [r.handler for r in replies] == ["listen"]
    assert replies[0].status in ("completed", "incomplete")
    served.generated(before)


async def test_realtime_history_and_instructions(served: Served) -> None:
    first = sorted(served.takes)[0]
    handler = HANDLERS[first]
    client = await Client.connect(served.address.realtime)
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "instructions": "Answer in one word."}})
    if first == AUDIO:
        pcm = base64.b64encode(b"\x10\x20" * 16000).decode()
        await client.send({"type": "input_audio_buffer.append", "audio": pcm})
        await client.send({"type": "input_audio_buffer.commit"})
    else:
        await client.send(image_event(data_url(jpeg_bytes("A")), timestamp=0.0))
    for question in ("First question?", "And the second?"):
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": question}]}})
        before = served.engine().tokens_generated
        await respond(client, [handler])
        served.generated(before)
    await client.close()


async def test_realtime_cancel_stops_the_engine(served: Served) -> None:
    name = "slow" if served.engine_kind == TRF else "tiny"
    engine = served.engine(name)
    order = [m for m in (IMAGE, VIDEO, AUDIO) if m in served.takes]
    handler = HANDLERS[order[-1] if name == "slow" else order[0]]  # as the fixture set them
    client = await Client.connect(f"{served.address.ws}/v1/realtime?model={name}")
    await client.update(handlers=[handler])
    # on vLLM the model talks for long when asked to (its config's limit is a few tokens)
    await ask_to_talk(client, audio=handler == "listen",
                      max_output_tokens=2000 if served.engine_kind == VLLM else None)
    while (event := await client.recv(180))["type"] != "response.output_text.delta":
        assert event["type"] not in ("response.done", "error"), event
    await client.send({"type": "response.cancel"})
    got = await client.until("response.done", timeout=60)
    assert got[-1]["response"]["status"] == "cancelled"
    stopped = engine.tokens_generated
    await asyncio.sleep(0.5)
    assert engine.tokens_generated == stopped and engine.active == 0
    await client.close()


async def test_chat_long_speech_within_the_requests_limit(served: Served, tmp_path: Path,
                                                         ) -> None:
    """45 s of speech in one chat request (over the audio encoder's 30 s window: the engine
    hands it over in clips) through the profile's `listen` handler; the request's
    max_tokens, below the model's, holds."""
    needs(served, AUDIO)
    wav = flite_wav(tmp_path / "s.wav", "hello world. this is a test of speech recognition")
    async with httpx.AsyncClient(base_url=served.address.http, timeout=120) as http:
        r = await http.post("/v1/chat/completions", json={
            "model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [
                {"type": "input_audio",
                 "input_audio": {"data": wav_base64(wav, 45), "format": "wav"}},
                {"type": "text", "text": "what is said?"}]}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == 4, body
    assert body["choices"][0]["finish_reason"] == "length"


def _wav_part(tmp_path: Path) -> dict[str, Any]:
    wav = flite_wav(tmp_path / "q.wav", "what is the weather like")
    return {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(wav.read_bytes()).decode(), "format": "wav"}}


@pytest.mark.parametrize("media", ["image", "multi-image", "audio"])
async def test_chat_completions_with_the_openai_sdk(served: Served, media: str,
                                                    tmp_path: Path) -> None:
    needs(served, AUDIO if media == "audio" else IMAGE)
    if media == "audio":
        parts: list[Any] = [_wav_part(tmp_path)]
    else:
        count = 2 if media == "multi-image" else 1
        parts = [{"type": "image_url", "image_url": {"url": data_url(jpeg_bytes(str(i)))}}
                 for i in range(count)]
    client = AsyncOpenAI(api_key="any", base_url=f"{served.address.http}/v1")
    before = served.engine().tokens_generated
    stream = await client.chat.completions.create(
        model="tiny", stream=True, max_tokens=served.tokens,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [*parts, {"type": "text", "text": "What?"}]}])
    chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    served.generated(before, at_most=True)
    await client.close()


@pytest.mark.parametrize("engine_kind", [TRF, VLLM])
def test_an_architecture_the_project_never_names_serves_with_zero_code(
        engine_kind: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`streamagent serve --source DIR` on a LLaVA-1.5 checkpoint: no family, no builder, no
    code path in the project names it. (The command's own config, served in this process:
    test_transformers runs the command with these flags.)"""
    import json

    import websockets.sync.client as ws_client

    from agent.cli import with_flag_model
    from tests.unnamed import build_llava

    source = tmp_path_factory.getbasetemp() / "llava"
    if not (source / "config.json").exists():
        build_llava(source)
    config = with_flag_model(Config(), ModelConfig(engine=engine_kind, source=str(source)), None)
    with (ServerThread(Runtime.build(config, get_plugin_manager())) as address,
          ws_client.connect(address.realtime, max_size=None) as ws):
        session = json.loads(ws.recv())["session"]
        assert session["streamagent"]["handlers"] == ["describe"]
        ws.send(json.dumps(image_event(data_url(jpeg_bytes("x")), text="what?")))
        # a short answer (the model's own limit is 128 tokens: seconds on a CPU)
        ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 8}}))
        deltas = 0
        while (event := json.loads(ws.recv(timeout=120)))["type"] != "response.done":
            assert event["type"] != "error", event
            deltas += event["type"] == "response.output_text.delta"
        assert event["response"]["status"] in ("completed", "incomplete") and deltas


def test_a_handler_for_input_the_model_lacks_fails_at_start_up(
        tmp_path_factory: pytest.TempPathFactory, root_logging: None) -> None:
    """`streamagent serve` (its click command, in this process) exits 1 with the reason."""
    from click.testing import CliRunner

    from agent.cli import main
    from tests.unnamed import build_llava

    source = tmp_path_factory.getbasetemp() / "llava"
    if not (source / "config.json").exists():
        build_llava(source)
    out = CliRunner().invoke(main, ["serve", "--port", "0", "--source", str(source),
                                    "--handlers", "describe,listen"])
    assert out.exit_code == 1 and "Traceback" not in out.output, out.output
    assert "handler 'listen' needs audio input, but model 'default-model' takes image" in \
        out.output


async def test_a_family_plugin_fixes_what_the_generic_path_cannot(
        tmp_path: Path) -> None:
    """The example plugin (examples/streamagent-system-in-user) on a checkpoint whose chat
    template has no system role: the generic path fails on instructions, the family serves."""
    import streamagent_system_in_user

    from agent.engine import ModelRequest
    from agent.parts import text_only
    from agent.plugins import collect
    from plugins import hf
    from tests.unnamed import STRICT, build_llava

    source = str(build_llava(tmp_path / "strict", template=STRICT))
    families = collect(get_plugin_manager([hf, streamagent_system_in_user])).families
    request = ModelRequest(prompt="What?", instructions="Be brief.",
                           images=(__import__("numpy").zeros((48, 64, 3), "uint8"),))
    gen = GenerationConfig(max_new_tokens=4, min_new_tokens=4)
    for family, works in ((None, False), ("system-in-user", True)):
        engine = hf.TransformersEngine("m", ModelConfig(
            engine=TRF, source=source, family=family, generation=gen), families=families)
        await engine.start()
        try:
            if works:
                assert len("".join([t async for t in text_only(engine.stream(request))])) > 0
                assert engine.tokens_generated == 4
            else:
                with pytest.raises(Exception, match="Only user and assistant roles"):
                    _ = [t async for t in engine.stream(request)]
        finally:
            await engine.close()
