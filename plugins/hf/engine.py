"""The transformers engine: any device, streams tokens from a worker thread, aborts on close."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import ConfigError, ModelConfig, ModelRequest, ThreadedEngine
from plugins.hf import minicpm
from plugins.hf.families import FAMILIES, Family

log = logging.getLogger(__name__)
DTYPES = ("auto", "bfloat16", "float16", "float32")


class TransformersEngine(ThreadedEngine):
    """Options: ``max_pixels`` (frame budget, default 640*480)."""

    kind = "transformers"

    def __init__(self, name: str, config: ModelConfig) -> None:
        super().__init__(name, config)
        self.family = family_of(name, config)
        if config.dtype not in DTYPES:
            raise ConfigError(f"model {name!r}: dtype {config.dtype!r} is not one of {DTYPES}")
        self.max_pixels = int(config.options.get("max_pixels", 640 * 480))
        self.tokens_generated = 0
        self.active = 0

    def load(self) -> None:
        import torch
        from transformers import AutoProcessor, AutoTokenizer

        source, cfg = str(self.config.source), self.config
        kwargs: dict[str, Any] = {"dtype": "auto" if cfg.dtype == "auto" else
                                  getattr(torch, cfg.dtype)}
        if cfg.device_map is not None:
            kwargs["device_map"] = cfg.device_map
        log.info("loading %s (%s) from %s", self.name, self.family.name, source)
        remote = self.family.remote_code
        load = functools.partial(minicpm.load, family=self.family.name) if remote else \
            self.family.load
        self.model = load(source, **kwargs).eval()
        if cfg.device_map is None:
            self.model.to(cfg.device)
        if remote:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
            self.chat = minicpm.MiniCPMChat(
                self.model, self.tokenizer, self.family.name, self.family.modalities,
                self.max_pixels, float(cfg.options.get("token_timeout_s",
                                                       minicpm.TOKEN_TIMEOUT_S)))
        else:
            self.processor = AutoProcessor.from_pretrained(source)
            self.tokenizer = self.processor.tokenizer

    def generate(self, request: ModelRequest, cancelled: threading.Event) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancelled.is_set()

        if "seed" in request.options:
            import torch

            torch.manual_seed(int(request.options["seed"]))
        options = decoding(self.config, request.options)
        options["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
        self.active += 1
        try:
            if self.family.remote_code:
                yield from self.chat.stream(request, options, cancelled, self._count)
            else:
                yield from self._generate(request, options, cancelled)
        finally:
            self.active -= 1

    def _generate(self, request: ModelRequest, options: dict[str, Any],
                  cancelled: threading.Event) -> Iterator[str]:
        inputs = self.family.inputs(self.processor, request, self.max_pixels)
        inputs = inputs.to(self.model.device).to(self.model.dtype)
        if options.get("num_beams", 1) > 1:  # beam search cannot stream: one delta at the end
            out = self.model.generate(**inputs, **options)
            new = out[0, inputs["input_ids"].shape[1]:]
            self.tokens_generated += int(new.numel())
            yield str(self.tokenizer.decode(new, skip_special_tokens=True))
            return
        streamer = counting_streamer(self, self.tokenizer)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(**inputs, **options, streamer=streamer)
            except BaseException as exc:
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name=f"generate-{self.name}", daemon=True)
        thread.start()
        try:
            for text in streamer:
                if text:
                    yield text
        finally:
            cancelled.set()  # stops generate() if we leave early; harmless after the end
            thread.join()
        if failure:
            raise failure[0]

    def _count(self, tokens: int) -> None:
        self.tokens_generated += tokens


def family_of(name: str, config: ModelConfig) -> Family:
    if config.family not in FAMILIES:
        raise ConfigError(f"model {name!r}: unknown family {config.family!r}; "
                          f"the transformers engine knows {sorted(FAMILIES)}")
    family = FAMILIES[config.family]
    if not config.source:
        raise ConfigError(f"model {name!r}: no source (a checkpoint directory or a hub id)")
    local = Path(config.source).expanduser()
    looks_local = config.source.startswith((".", "/", "~")) or local.exists()
    if looks_local and not (local / "config.json").is_file():
        raise ConfigError(f"model {name!r}: no checkpoint at {config.source} "
                          "(expected a directory with config.json)")
    if family.remote_code and not config.trust_remote_code:
        raise ConfigError(f"model {name!r}: {family.name} runs code from its checkpoint; "
                          "set trust_remote_code: true if you trust it")
    return family


def decoding(config: ModelConfig, overrides: Any) -> dict[str, Any]:
    gen = config.generation.model_dump()
    gen.update({k: v for k, v in dict(overrides).items() if k in gen})
    out = {k: gen[k] for k in ("max_new_tokens", "min_new_tokens", "num_beams", "do_sample",
                               "repetition_penalty")}
    if gen["do_sample"]:
        out.update(temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"])
    return out


def counting_streamer(engine: TransformersEngine, tokenizer: Any) -> Any:
    """A TextIteratorStreamer that also counts the tokens generated (after the prompt)."""
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                engine.tokens_generated += int(value.numel())
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
