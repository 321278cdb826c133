"""The transformers engine: any device, streams tokens from a worker thread, aborts on close.

Any checkpoint that transformers' Auto classes load serves with no family named; a registered
family changes only what differs (plugins/hf/families.py, agent/families.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from agent import (
    ChatCall,
    ConfigError,
    Family,
    ModelConfig,
    ModelRequest,
    ThreadedEngine,
    Usage,
    decoding,
    family_for_type,
    family_of,
    installed_families,
    learn_modalities,
)
from plugins.hf.inputs import AUTO_CLASSES, auto_load, processor_inputs

log = logging.getLogger(__name__)
DTYPES = ("auto", "bfloat16", "float16", "float32")
TOKEN_TIMEOUT_S = 600.0


class TransformersEngine(ThreadedEngine):
    """Options: ``max_pixels`` (frame budget, default 640*480), ``token_timeout_s`` (longest
    wait for the next token, default 600)."""

    kind = "transformers"
    uses_families = True

    def __init__(self, name: str, config: ModelConfig,
                 families: Mapping[str, Family] | None = None) -> None:
        super().__init__(name, config)
        self.families = dict(installed_families() if families is None else families)
        self.named_family = family_of(name, config, self.families)
        self.family = self.named_family or Family("generic")
        if config.dtype not in DTYPES:
            raise ConfigError(f"model {name!r}: dtype {config.dtype!r} is not one of {DTYPES}")
        self.max_pixels = int(config.options.get("max_pixels", 640 * 480))
        self.token_timeout_s = float(config.options.get("token_timeout_s", TOKEN_TIMEOUT_S))
        self.tokens_generated = 0
        self.active = 0

    def load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer

        source, cfg = str(self.config.source), self.config
        remote = cfg.trust_remote_code
        checkpoint = AutoConfig.from_pretrained(source, trust_remote_code=remote)
        self.family = self.named_family or family_for_type(checkpoint.model_type, self.families)
        kwargs: dict[str, Any] = {"dtype": "auto" if cfg.dtype == "auto" else
                                  getattr(torch, cfg.dtype)}
        if cfg.device_map is not None:
            kwargs["device_map"] = cfg.device_map
        log.info("loading %s (%s) from %s", self.name, self.family.name, source)
        if self.family.load is not None:
            self.model = self.family.load(source, **kwargs)
        else:
            self.model = auto_load(source, checkpoint, remote, kwargs)
            if self.model is None:
                raise ConfigError(f"model {self.name!r}: transformers has no multimodal or "
                                  f"text model for model_type {checkpoint.model_type!r} "
                                  f"(tried {', '.join(AUTO_CLASSES)})")
        self.model.eval()
        if cfg.device_map is None:
            self.model.to(cfg.device)
        if self.family.chat is not None:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=remote)
            self.modalities = self.family.modalities or frozenset()
        else:
            self.processor = AutoProcessor.from_pretrained(source, trust_remote_code=remote)
            self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
            self.modalities = self.family.modalities or learn_modalities(self.processor)
        log.info("%s takes %s", self.name, ", ".join(sorted(self.modalities)) or "text only")

    def generate(self, request: ModelRequest,
                 cancelled: threading.Event) -> Iterator[str | Usage]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancelled.is_set()

        if "seed" in request.options:
            import torch

            torch.manual_seed(int(request.options["seed"]))
        options = decoding(self.config, request.options, self.family)
        options["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
        self.active += 1
        try:
            if self.family.chat is not None:
                yield from self._chat(request, options, cancelled)
            else:
                yield from self._generate(request, options, cancelled)
        finally:
            self.active -= 1

    def _chat(self, request: ModelRequest, options: dict[str, Any],
              cancelled: threading.Event) -> Iterator[str | Usage]:
        """A family's own ``chat``; it counts tokens through ``counted`` (else each text piece
        counts as one)."""
        assert self.family.chat is not None
        before, pieces = self.tokens_generated, 0

        def counted(tokens: int) -> None:
            self.tokens_generated += tokens

        call = ChatCall(self.model, self.tokenizer, request, options, self.max_pixels,
                        self.modalities or frozenset(), cancelled, counted, self.token_timeout_s)
        try:
            for text in self.family.chat(call):
                pieces += 1
                yield text
        finally:
            if self.tokens_generated == before:
                self.tokens_generated += pieces
        yield _usage(None, self.tokens_generated - before, options["max_new_tokens"])

    def _generate(self, request: ModelRequest, options: dict[str, Any],
                  cancelled: threading.Event) -> Iterator[str | Usage]:
        inputs = processor_inputs(self.processor, request, self.family,
                                  self.modalities or frozenset(), self.max_pixels)
        inputs = inputs.to(self.model.device).to(self.model.dtype)
        before, prompt = self.tokens_generated, int(inputs["input_ids"].shape[1])
        if options.get("num_beams", 1) > 1:  # beam search cannot stream: one delta at the end
            out = self.model.generate(**inputs, **options)
            new = out[0, inputs["input_ids"].shape[1]:]
            self.tokens_generated += int(new.numel())
            yield str(self.tokenizer.decode(new, skip_special_tokens=True))
            yield _usage(prompt, self.tokens_generated - before, options["max_new_tokens"])
            return
        streamer = counting_streamer(self, self.tokenizer, self.token_timeout_s)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(**inputs, **options, streamer=streamer)
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
        yield _usage(prompt, self.tokens_generated - before, options["max_new_tokens"])


def _usage(prompt: int | None, generated: int, limit: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=generated,
                 finish_reason="length" if generated >= limit else "stop")


def counting_streamer(engine: TransformersEngine, tokenizer: Any, timeout_s: float) -> Any:
    """A TextIteratorStreamer that also counts the tokens generated (after the prompt)."""
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                engine.tokens_generated += int(value.numel())
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True,
                            timeout=timeout_s)
