"""The model layer's generic path and what a family may change in it.

With no family, a checkpoint is served as transformers' Auto classes (or vLLM's registry) load
it: its modalities are learned from its processor and chat template, the request becomes typed
content parts (``{"type": "image"}``, ``{"type": "video"}``, ``{"type": "audio"}``,
``{"type": "text", ...}``) rendered by the checkpoint's own chat template, and the media goes to
the processor (transformers) or as ``multi_modal_data`` (vLLM). A ``Family``, registered through
the ``register_families`` hook, overrides only what differs for one family of checkpoints.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import long_audio, templates
from agent.engine import Entry, ModelRequest
from agent.errors import ConfigError
from agent.media import RGB

if TYPE_CHECKING:
    from agent.config import ModelConfig

MAX_VIDEO_FRAMES = 64
MODALITIES = ("image", "video", "audio")
DEFAULT_PROMPT = "Describe what you see and hear."
Messages = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ChatCall:
    """What a family's own ``chat`` gets: the loaded model and tokenizer, the request, the
    decoding options (with ``stopping_criteria``) and the frame budget; the request's
    cancellation (set it to stop generation when leaving early), a counter for the tokens
    generated (uncounted, each text piece counts as one) and the longest wait for a token."""

    model: Any
    tokenizer: Any
    request: ModelRequest
    options: dict[str, Any]
    max_pixels: int
    modalities: frozenset[str]
    cancelled: threading.Event = field(default_factory=threading.Event)
    counted: Callable[[int], None] = field(default=lambda tokens: None)
    token_timeout_s: float = 600.0


@dataclass(frozen=True)
class Family:
    """What one family of checkpoints needs beyond the generic path. Every field is optional
    except ``name``; the defaults are the generic path."""

    name: str
    model_types: tuple[str, ...] = ()
    """config.json ``model_type`` values this family serves when a model names no family."""
    modalities: frozenset[str] | None = None
    """What it takes in; ``None``: learned from the checkpoint's processor and chat template."""
    remote_code: bool = False
    """Runs code shipped with the checkpoint (the model config must set trust_remote_code)."""
    load: Callable[..., Any] | None = None
    """transformers: ``load(source, **from_pretrained_kwargs) -> model``; default: the first
    of ``AutoModelForMultimodalLM``, ``AutoModelForImageTextToText``, ... that maps it."""
    speech: Callable[..., Any] | None = None
    """transformers: ``speech(source, **from_pretrained_kwargs) -> model``, the whole checkpoint
    with its speech generator, for ``options.speech``. The model is one of transformers' omni
    classes: its ``thinker`` writes text, its ``speaker_map`` names its voices, and
    ``generate(..., speaker=S, return_audio=True)`` gives the text and the wave."""
    messages: Callable[[ModelRequest, Messages], Messages] | None = None
    """``messages(request, media_parts) -> chat``; default: ``agent.families.messages``."""
    processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the processor (transformers) or vLLM's
    ``mm_processor_kwargs``."""
    generation: Mapping[str, Any] = field(default_factory=dict)
    """Decoding options this family needs whatever the config asks (e.g. ``num_beams: 1``)."""
    chat: Callable[[ChatCall], Iterator[str]] | None = None
    """transformers: replaces processor + ``generate`` for checkpoints with their own
    ``chat()`` API; yields text pieces."""
    vllm: bool = True
    """Whether the vLLM engine may serve it (vLLM must also support the architecture)."""
    prompt: Callable[[ModelRequest], str] | None = None
    """``prompt(request) -> text`` for prompt-style checkpoints (no chat template): the text
    the processor (or vLLM's) places the image tokens around, from ``request.task`` and the
    question (BLIP-2's ``Question: … Answer:``); default with no template: the question."""
    stop: tuple[str, ...] = ()
    """Text that ends an answer, cut from it (BLIP-2: the newline)."""
    answer: Callable[[Any, str, ModelRequest], str] | None = None
    """transformers: ``answer(processor, raw_text, request) -> text``, the processor's
    post-processing of the whole output decoded with its special tokens (Florence-2); the
    answer then comes in one piece."""


GENERIC = Family("generic")


def messages(request: ModelRequest, content: Messages) -> Messages:
    """The chat: instructions, few-shot examples, history, then the media parts and question.

    Tool turns take the shape chat templates read (transformers' "Tool use"; Qwen2.5/3-VL,
    Llama 3.1, Mistral): an assistant's ``tool_calls`` as ``{"id", "type": "function",
    "function": {"name", "arguments": dict}}`` and a ``tool`` message with ``tool_call_id``,
    the function's ``name`` and the output. Their contents are plain strings, which every
    template that renders tools takes (text-only templates concatenate them). With no prompt
    after a function's output, the answer goes on from it (no new question)."""
    msgs: Messages = []
    if request.instructions:
        msgs.append({"role": "system", "content": [{"type": "text", "text": request.instructions}]})
    for _, answer in request.examples:
        msgs.append({"role": "user", "content": [{"type": "image"}]})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    if request.sequence:
        return msgs + sequence_messages(request, content)
    names: dict[str, str] = {}  # call id -> function name, for the tool messages
    for turn in request.history:
        if turn.role == "assistant" and turn.tool_calls:
            names.update((call.call_id, call.name) for call in turn.tool_calls)
            msgs.append({"role": "assistant", "content": turn.text, "tool_calls": [
                {"id": call.call_id, "type": "function",
                 "function": {"name": call.name, "arguments": _arguments(call.arguments)}}
                for call in turn.tool_calls]})
        elif turn.role == "tool":
            msgs.append({"role": "tool", "tool_call_id": turn.call_id,
                         "name": names.get(turn.call_id, ""), "content": turn.text})
        elif turn.role in ("user", "assistant"):
            msgs.append({"role": turn.role, "content": [{"type": "text", "text": turn.text}]})
    users = [m for m in msgs if m["role"] == "user" and isinstance(m["content"], list)]
    if not request.prompt and request.history and request.history[-1].role == "tool" and users:
        # going on from a function's output: the media join the question that led to the
        # call, and the model answers after the output
        users[-1]["content"] = [*content, *users[-1]["content"]]
        return msgs
    prompt = request.prompt or DEFAULT_PROMPT
    msgs.append({"role": "user", "content": [*content, {"type": "text", "text": prompt}]})
    return msgs


def sequence_messages(request: ModelRequest, content: Messages) -> Messages:
    """``request.sequence`` as chat messages: consecutive entries of one role make one message
    (text, image and audio parts in order); the request's own media and prompt end the last
    user message, or make one. The same sequence renders the same text, so a sequence that
    extends another renders a prompt that extends the other's."""
    msgs: Messages = []
    for entry in request.sequence:
        part = ({"type": "image"} if entry.image is not None else
                {"type": "audio"} if entry.audio is not None else
                {"type": "text", "text": entry.text})
        if msgs and msgs[-1]["role"] == entry.role:
            msgs[-1]["content"].append(part)
        else:
            msgs.append({"role": entry.role, "content": [part]})
    tail = [*content, *([{"type": "text", "text": request.prompt}] if request.prompt else [])]
    if tail and msgs and msgs[-1]["role"] == "user":
        msgs[-1]["content"] += tail
    elif tail:
        msgs.append({"role": "user", "content": tail})
    return msgs


def sequence_media(request: ModelRequest, window: int | None) -> ModelRequest:
    """``request`` with each sound of its sequence split into clips the audio encoder takes
    (``long_audio``: one audio entry per clip, in order)."""
    if window is None or not any(e.audio is not None and e.audio.size > window
                                 for e in request.sequence):
        return request
    entries: list[Entry] = []
    for entry in request.sequence:
        clips = long_audio.split(entry.audio, window) if entry.audio is not None else []
        if len(clips) < 2:
            entries.append(entry)
            continue
        entries += [replace(entry, audio=clip, key=entry.key and f"{entry.key}/{i}")
                    for i, clip in enumerate(clips)]
    return replace(request, sequence=tuple(entries))


def _arguments(text: str) -> Any:
    """A call's arguments as templates want them: the JSON object parsed (Llama 3.1 writes them
    with ``tojson``); text that is not one stays text (Qwen writes a string as it is)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, dict) else text


def learn_modalities(processor: Any) -> frozenset[str]:
    """What a checkpoint takes in: a processor component for the modality, and a chat template
    that renders a placeholder for its content part. With no chat template (BLIP-2, Florence-2,
    PaliGemma) or one of plain-string content (JoyCaption), a component and the placeholder
    token the processor expands (which a plain-string template must place itself)."""
    style = templates.template_style(processor)
    if style != templates.PARTS:
        return templates.placed_modalities(processor, style)
    return frozenset(m for m in MODALITIES if templates.has_component(processor, m)
                     and templates.renders_part(processor, m))


def media_parts(request: ModelRequest, modalities: frozenset[str],
                audio_clips: int = 1) -> Messages:
    """The user's media as typed content parts, in the order the media is passed (the audio
    as ``audio_clips`` consecutive parts when it was split for the encoder's window)."""
    parts: Messages = [{"type": "image"} for _ in request.images if "image" in modalities]
    if request.video and "video" in modalities:
        parts.append({"type": "video"})
    if request.audio is not None and "audio" in modalities:
        parts += [{"type": "audio"} for _ in range(audio_clips)]
    return parts


def video_metadata(frames: int, fps: float) -> dict[str, Any]:
    """What processors need to know of frames already sampled at ``fps``: their real times
    (Qwen3-VL writes them into the prompt as ``<t seconds>``)."""
    return {"total_num_frames": frames, "fps": fps, "duration": frames / fps,
            "frames_indices": list(range(frames))}


def pad_frames(frames: list[RGB], multiple: int) -> list[RGB]:
    """Repeat the last frame up to a multiple of the video encoder's temporal patch (Qwen3-VL
    refuses a 1-frame video; qwen-vl-utils pads the same way)."""
    short = (-len(frames)) % max(1, multiple)
    return frames + [frames[-1]] * short if frames else frames


def fit(image: RGB, max_pixels: int) -> RGB:
    """Downscale to at most ``max_pixels`` pixels, keeping the aspect ratio."""
    from PIL import Image

    h, w = image.shape[:2]
    if h * w <= max_pixels:  # writable: torch warns on read-only arrays (a decoded frame's);
        return image if image.flags.writeable else np.array(image)  # a timeline's are
    scale = (max_pixels / (h * w)) ** 0.5
    size = (max(28, int(w * scale)), max(28, int(h * scale)))
    return np.array(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def subsample(frames: tuple[RGB, ...], limit: int = MAX_VIDEO_FRAMES) -> list[RGB]:
    """At most ``limit`` frames, uniformly spread, as the MiniCPM-V demo does."""
    if len(frames) <= limit:
        return list(frames)
    step = len(frames) / limit
    return [frames[int(i * step + step / 2)] for i in range(limit)]


def check_modalities(model: str, modalities: frozenset[str] | None,
                     wanted: Mapping[str, str]) -> str | None:
    """A message naming the first handler (name -> modality) the model cannot serve."""
    if modalities is None:
        return None
    for handler, modality in wanted.items():
        if modality not in modalities:
            takes = ", ".join(sorted(modalities)) or "text only"
            return (f"handler {handler!r} needs {modality} input, but model {model!r} takes "
                    f"{takes}")
    return None


def decoding(config: ModelConfig, overrides: Mapping[str, Any],
             family: Family = GENERIC) -> dict[str, Any]:
    """generate()'s decoding options: the model's config, the request's overrides, then what
    the family requires."""
    gen = config.generation.model_dump()
    gen.update({k: v for k, v in dict(overrides).items() if k in gen})
    gen.update({k: v for k, v in family.generation.items() if k in gen})
    out = {k: gen[k] for k in ("max_new_tokens", "min_new_tokens", "num_beams", "do_sample",
                               "repetition_penalty")}
    # a client's token limit under the configured minimum wins (vLLM refuses min > max)
    out["min_new_tokens"] = min(out["min_new_tokens"], out["max_new_tokens"])
    if gen["do_sample"]:
        out.update(temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"])
    return out


def family_of(name: str, config: ModelConfig, families: Mapping[str, Family]) -> Family | None:
    """The family a model names (``None``: decided from the checkpoint when it loads), after
    checking the source."""
    if config.family is not None and config.family not in families:
        raise ConfigError(f"model {name!r}: unknown family {config.family!r}; registered "
                          f"families: {sorted(families)} (or name none for the generic path)")
    if not config.source:
        raise ConfigError(f"model {name!r}: no source (a checkpoint directory or a hub id)")
    local = Path(config.source).expanduser()
    looks_local = config.source.startswith((".", "/", "~")) or local.exists()
    if looks_local and not (local / "config.json").is_file():
        raise ConfigError(f"model {name!r}: no checkpoint at {config.source} "
                          "(expected a directory with config.json)")
    if config.family is None:
        return None
    family = families[config.family]
    if family.remote_code and not config.trust_remote_code:
        raise ConfigError(f"model {name!r}: {family.name} runs code from its checkpoint; "
                          "set trust_remote_code: true if you trust it")
    return family


def family_for_type(model_type: str, families: Mapping[str, Family]) -> Family:
    """The family that claims a checkpoint's ``model_type``, or the generic path."""
    for family in families.values():
        if model_type in family.model_types:
            return family
    return GENERIC


def probe_modalities(source: str, trust_remote_code: bool = False) -> frozenset[str]:
    """What a checkpoint takes in, from its processor alone (no weights are loaded)."""
    try:
        from transformers import AutoProcessor
    except ImportError as exc:
        raise ConfigError("serving a checkpoint needs transformers: "
                          "pip install 'streamagent[transformers]'") from exc
    try:
        processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the processor of {source}: {exc}") from exc
    return learn_modalities(processor)


def claiming_family(source: str, trust_remote_code: bool,
                    families: Mapping[str, Family]) -> Family | None:
    """The registered family that claims a checkpoint's ``model_type`` (its config only)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (ImportError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the config of {source}: {exc}") from exc
    family = family_for_type(str(config.model_type), families)
    return None if family is GENERIC else family
