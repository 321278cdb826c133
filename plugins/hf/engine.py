"""The transformers engine: any device, streams tokens from a worker thread, aborts on close.

Any checkpoint that transformers' Auto classes load serves with no family named; a registered
family changes only what differs (plugins/hf/families.py, agent/families.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Generator, Iterator, Mapping
from typing import Any, Literal

from pydantic import Field

from agent import (
    ChatCall,
    ConfigError,
    Family,
    InvalidRequest,
    ModelConfig,
    ModelRequest,
    Options,
    Part,
    Prompter,
    ThreadedEngine,
    TokenPieces,
    Usage,
    check_options,
    decoding,
    detect_format,
    family_for_type,
    family_of,
    installed_families,
    learn_modalities,
    requested_adapter,
)
from plugins.hf.attention import use_grouped_sdpa
from plugins.hf.constrain import schema_processor
from plugins.hf.inputs import AUTO_CLASSES, auto_load, processor_args
from plugins.hf.kv_reuse import Reuse, SessionCaches
from plugins.hf.partial_inputs import partial_inputs
from plugins.hf.quantize import load_kwargs
from plugins.hf.streaming import counting_streamer, cut, usage
from plugins.hf.talker import Talker

log = logging.getLogger(__name__)
DTYPES = ("auto", "bfloat16", "float16", "float32")
TOKEN_TIMEOUT_S = 600.0


class TransformersOptions(Options):
    """``options:`` of a model on the transformers engine (see the class below)."""

    max_pixels: int = Field(default=640 * 480, ge=28 * 28)
    token_timeout_s: float = Field(default=TOKEN_TIMEOUT_S, gt=0)
    lora: dict[str, str] = Field(default_factory=dict)
    default_lora: str | None = None
    quantization: Literal["nf4", "fp4", "int8"] | None = None
    session_cache_mb: int = Field(default=512, ge=0)
    speech: bool = False
    speech_max_s: float = Field(default=60.0, gt=0)


class TransformersEngine(ThreadedEngine):
    """Options: ``max_pixels`` (frame budget, default 640*480), ``token_timeout_s`` (longest
    wait for the next token, default 600), ``lora: {name: path}`` PEFT adapters loaded beside
    the base model (with peft installed; a request picks one with option ``lora``,
    ``default_lora`` applies to all), as the vLLM engine takes them. Requests run under their
    adapter one at a time (the model holds one active adapter).

    ``quantization``: ``nf4``, ``fp4`` or ``int8`` (bitsandbytes, plugins/hf/quantize.py).

    ``speech``: load an omni checkpoint whole, its talker too, so that it speaks itself
    (plugins/hf/talker.py): its speakers are the engine's ``voices``, and a spoken answer is
    at most ``speech_max_s`` seconds long (default 60).

    ``session_cache_mb``: a session's KV cache is kept between its calls, and a prompt that
    extends the last one computes only what is new (plugins/hf/kv_reuse.py), within this many
    MB for all sessions of the model (default 512; 0: off).

    An ``output_schema`` is enforced with xgrammar on the generic path; a family's own
    ``chat()`` refuses one (and takes no tools: ``tool_format`` stays ``None``)."""

    kind = "transformers"
    options_model = TransformersOptions
    uses_families = True
    constrains = True

    def __init__(self, name: str, config: ModelConfig,
                 families: Mapping[str, Family] | None = None) -> None:
        super().__init__(name, config)
        self.families = dict(installed_families() if families is None else families)
        self.named_family = family_of(name, config, self.families)
        self.family = self.named_family or Family("generic")
        if config.dtype not in DTYPES:
            raise ConfigError(f"model {name!r}: dtype {config.dtype!r} is not one of {DTYPES}")
        check_options(TransformersOptions, config.options, f"models.{name}.options")
        opts = TransformersOptions.of(config.options)
        self.max_pixels = opts.max_pixels
        self.token_timeout_s = opts.token_timeout_s
        self.loras: dict[str, str] = dict(opts.lora)
        self._adapter_lock = threading.Lock()
        self.tokens_generated = 0
        self.active = 0
        self._grammars: Any = None  # xgrammar's compiler for this tokenizer, built on first use
        self.caches = SessionCaches(opts.session_cache_mb * 2**20)
        self.speech, self.speech_max_s = opts.speech, opts.speech_max_s
        self.talker: Talker | None = None

    def load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer

        source, cfg = str(self.config.source), self.config
        remote = cfg.trust_remote_code
        checkpoint = AutoConfig.from_pretrained(source, trust_remote_code=remote)
        self.family = self.named_family or family_for_type(checkpoint.model_type, self.families)
        kwargs: dict[str, Any] = {"dtype": "auto" if cfg.dtype == "auto" else
                                  getattr(torch, cfg.dtype)}
        kwargs.update(load_kwargs(self.name, cfg.options.get("quantization"), checkpoint,
                                  cfg.device, kwargs["dtype"]))
        if cfg.device_map is not None:
            kwargs["device_map"] = cfg.device_map
        log.info("loading %s (%s) from %s", self.name, self.family.name, source)
        if self.speech:
            self.talker = Talker(self.name, self.family, source, kwargs)
            self.model, self.voices = self.talker.thinker, self.talker.voices
        elif self.family.load is not None:
            self.model = self.family.load(source, **kwargs)
        else:
            self.model = auto_load(source, checkpoint, remote, kwargs)
            if self.model is None:
                raise ConfigError(f"model {self.name!r}: transformers has no multimodal or "
                                  f"text model for model_type {checkpoint.model_type!r} "
                                  f"(tried {', '.join(AUTO_CLASSES)})")
        self.model.eval()
        if "device_map" not in kwargs:  # a quantized model is placed as it loads
            self.model.to(cfg.device)
        use_grouped_sdpa(self.model)  # plugins/hf/attention.py
        self._load_adapters()
        if self.family.chat is not None:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=remote)
            self.modalities = self.family.modalities or frozenset()
            self.converses = False  # its chat() takes pictures and a question, not a timeline
        else:
            self.processor = AutoProcessor.from_pretrained(source, trust_remote_code=remote)
            self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
            self.modalities = self.family.modalities or learn_modalities(self.processor)
            self.prompter = Prompter(self.processor, self.family, self.modalities)
            self.token_pieces = TokenPieces(self.tokenizer)
            self.converses = self.prompter.converses
            self.tool_format = detect_format(getattr(self.processor, "chat_template", None)
                                             or getattr(self.tokenizer, "chat_template", None))
        log.info("%s takes %s; tool calls: %s", self.name,
                 ", ".join(sorted(self.modalities)) or "text only", self.tool_format or "none")

    def _load_adapters(self) -> None:
        """The ``lora`` adapters beside the base weights, none active until a request asks."""
        if not self.loras:
            return
        try:
            import peft  # noqa: F401  (transformers' load_adapter needs it)
        except ImportError as exc:
            raise ConfigError(f"model {self.name!r}: options.lora needs peft "
                              "(pip install peft)") from exc
        for name, path in sorted(self.loras.items()):
            self.model.load_adapter(path, adapter_name=name)
        self.model.disable_adapters()

    def adapter(self, request: ModelRequest) -> str | None:
        """The request's LoRA adapter (or the model's ``default_lora``); an unknown one is
        refused as the vLLM engine refuses it."""
        return requested_adapter(self.name, request.options,
                                 self.config.options.get("default_lora"), self.loras)

    @contextlib.contextmanager
    def _using(self, adapter: str | None) -> Iterator[None]:
        """The model with ``adapter`` active (none: the base), held for one request."""
        if not self.loras:
            yield
            return
        with self._adapter_lock:
            if adapter is None:
                self.model.disable_adapters()
            else:
                self.model.enable_adapters()
                self.model.set_adapter(adapter)
            yield

    def generate(self, request: ModelRequest,
                 cancelled: threading.Event) -> Iterator[str | Part]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancelled.is_set()

        if "seed" in request.options:
            import torch

            torch.manual_seed(int(request.options["seed"]))
        options = decoding(self.config, request.options, self.family)
        options["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
        if request.output_schema is not None:
            self._constrain(options, request.output_schema)
        adapter = self.adapter(request)
        self.active += 1
        try:
            with self._using(adapter):
                if request.voice and self.talker is not None and not (
                        request.tools or request.output_schema):
                    yield from self.talker.say(self, request, options, cancelled,
                                               self.speech_max_s)
                elif self.family.chat is not None:
                    yield from self._chat(request, options, cancelled)
                else:
                    yield from self._generate(request, options, cancelled)
        finally:
            self.active -= 1

    def _constrain(self, options: dict[str, Any], schema: Mapping[str, Any]) -> None:
        """Decode under ``schema``: a grammar mask on the logits, one sequence (beams would
        reorder the grammar's state), and no minimum length (it would forbid the end of a
        complete JSON value)."""
        from transformers import LogitsProcessorList

        if self.family.chat is not None:
            raise InvalidRequest(
                f"model {self.name!r} ({self.family.name}) answers through its own chat(), "
                "which cannot enforce an output_schema (constrained decoding)",
                param="output_schema")
        compiled = self._compile(schema)
        options.update(min_new_tokens=0, num_beams=1,
                       logits_processor=LogitsProcessorList([schema_processor(compiled)]))

    def _compile(self, schema: Mapping[str, Any]) -> Any:
        """``schema`` compiled by xgrammar for this tokenizer (compact JSON: no free
        whitespace, which a weak model could repeat up to its token limit)."""
        try:
            import xgrammar as xgr
        except ImportError as exc:
            raise InvalidRequest(f"model {self.name!r} cannot enforce an output_schema: "
                                 "xgrammar is not installed (pip install xgrammar)") from exc
        if self._grammars is None:
            head = self.model.get_output_embeddings()
            vocab = int(head.weight.shape[0]) if head is not None else len(self.tokenizer)
            stop = self.model.generation_config.eos_token_id
            stop = [stop] if isinstance(stop, int) else stop
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab,
                                                      stop_token_ids=stop or None)
            self._grammars = xgr.GrammarCompiler(info)
        try:
            return self._grammars.compile_json_schema(json.dumps(schema), any_whitespace=False)
        except (RuntimeError, ValueError, TypeError) as exc:  # "[time] file.cc:line: why"
            why = str(exc).strip().split(": ", 1)[-1]
            raise InvalidRequest(f"output_schema cannot be enforced: {why}",
                                 param="output_schema") from exc

    def _chat(self, request: ModelRequest, options: dict[str, Any],
              cancelled: threading.Event) -> Iterator[str | Usage]:
        """A family's own ``chat``; it counts tokens through ``counted`` (else each text piece
        counts as one)."""
        chat = self.family.chat
        assert chat is not None
        before, pieces = self.tokens_generated, 0

        def counted(tokens: int) -> None:
            self.tokens_generated += tokens

        call = ChatCall(self.model, self.tokenizer, request, options, self.max_pixels,
                        self.modalities or frozenset(), cancelled, counted, self.token_timeout_s)

        aborted = False

        def texts() -> Generator[str, None, None]:
            nonlocal pieces, aborted
            for text in chat(call):
                pieces += 1
                yield text
                # set while chat() waits at its piece: by our caller (chat() sets it at its
                # end too, so it is read here, not after)
                aborted = aborted or cancelled.is_set()

        stream = texts()
        try:
            stopped = yield from cut(stream, tuple(request.options.get("stop") or ()))
            if stopped:  # a request's stop string: the rest is not generated
                cancelled.set()
        finally:
            stream.close()
            if self.tokens_generated == before:
                self.tokens_generated += pieces
        yield usage(None, self.tokens_generated - before, options["max_new_tokens"],
                     "stop" if stopped else "abort" if aborted else None)

    def _generate(self, request: ModelRequest, options: dict[str, Any],
                  cancelled: threading.Event) -> Iterator[str | Usage]:
        stops = (*self.family.stop, *(request.options.get("stop") or ()))  # a family's, a
        if stops:  # request's: generate() stops on the text; the answer is cut before it
            options.update(stop_strings=list(stops), tokenizer=self.tokenizer)
        inputs, reuse = self.prepared(request, options)
        before, prompt = self.tokens_generated, int(inputs["input_ids"].shape[1])
        pieces = self._pieces(inputs, options, cancelled, reuse)
        stopped = False
        try:
            if self.family.answer is not None:  # post-processed whole
                yield self.family.answer(self.processor, "".join(pieces), request)
            else:
                stopped = yield from cut(pieces, stops)
        finally:
            pieces.close()
        yield usage(prompt, self.tokens_generated - before, options["max_new_tokens"],
                     "stop" if stopped else "abort" if cancelled.is_set() else None,
                     None if reuse is None else reuse.cached)

    def prepared(self, request: ModelRequest, options: Mapping[str, Any]
                 ) -> tuple[Any, Reuse | None]:
        """``request``'s processor inputs on the model's device, and how its call reuses its
        session's cache (``None``: computed afresh, from ``inputs``). The pictures that cache
        holds are not prepared again (plugins/hf/partial_inputs.py)."""
        text, kwargs = self._processor_args(request)

        def full() -> Any:
            return self.full_inputs(request, (text, kwargs))

        grids = self.caches.known(self.model, request, kwargs)
        inputs = None if grids is None else partial_inputs(
            self.processor, text, kwargs, self.family.processor_kwargs, grids, self.token_pieces)
        known = 0 if inputs is None else len(grids)
        inputs = full() if inputs is None else inputs.to(self.model.device).to(self.model.dtype)
        reuse = self.caches.prepare(self.model, request, inputs, self.adapter(request), options,
                                    known, full)
        return (full() if reuse is None and known else inputs), reuse

    def _processor_args(self, request: ModelRequest) -> tuple[str, dict[str, Any]]:
        return processor_args(self.processor, request, self.family,
                              self.modalities or frozenset(), self.max_pixels, self.prompter)

    def full_inputs(self, request: ModelRequest,
                    args: tuple[str, dict[str, Any]] | None = None) -> Any:
        """``request``'s processor inputs, every picture prepared, on the model's device."""
        text, kwargs = args or self._processor_args(request)
        out = self.processor(text=[text], return_tensors="pt", **kwargs,
                             **self.family.processor_kwargs)
        return out.to(self.model.device).to(self.model.dtype)

    def _pieces(self, inputs: Any, options: dict[str, Any], cancelled: threading.Event,
                reuse: Reuse | None = None) -> Generator[str, None, None]:
        """The answer's text as generated (special tokens kept for a family that
        post-processes it); an encoder-decoder's output holds no prompt. With ``reuse``: from
        the session's cache, which is kept once generate() has run."""
        special = self.family.answer is None
        if options.get("num_beams", 1) > 1:  # beam search cannot stream: one delta at the end
            out = self.model.generate(**inputs, **options)
            start = 1 if self.model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
            self.tokens_generated += int(out[0, start:].numel())
            yield str(self.tokenizer.decode(out[0, start:], skip_special_tokens=special))
            return
        streamer = counting_streamer(self, self.tokenizer, self.token_timeout_s, special)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                if reuse is None:
                    self.model.generate(**inputs, **options, streamer=streamer)
                else:
                    reuse.keep(self.model.generate(**reuse.inputs, **options, streamer=streamer))
            except BaseException as exc:
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name=f"generate-{self.name}", daemon=True)
        thread.start()
        finished = False
        try:
            for text in streamer:
                if text:
                    yield text
            finished = True
        finally:
            if not finished:  # we leave early: stop generate()
                cancelled.set()
            thread.join()
        if failure:
            raise failure[0]
