"""An omni checkpoint's own speech on the transformers engine (``options.speech``).

Qwen2.5-Omni is a thinker (text) and a talker with token2wav (speech): the talker turns the
thinker's hidden states for its answer into codec tokens, token2wav turns those into a 24 kHz
wave, in the voice of one of the checkpoint's speakers (``spk_dict.pt``: Chelsie, Ethan).
transformers runs the three one after the other in ``generate(..., return_audio=True)``, so
the speech comes once the whole answer is written, not sentence by sentence (the streaming
talker is vLLM-Omni's, not transformers'). The text is not streamed either: a spoken answer's
words go to the client as the transcript of its audio.

A request with functions or an output schema is answered in text (the talker would read a
call aloud); ``speak`` then says it in the fallback voice.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent import AudioChunk, ConfigError, Family, ModelRequest, Usage, chunked, float_to_pcm16
from plugins.hf.streaming import usage

if TYPE_CHECKING:
    from plugins.hf.engine import TransformersEngine

SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
          "perceiving auditory and visual inputs, as well as generating text and speech.")
"""The system prompt Qwen2.5-Omni's model card requires for speech out; a session's own
instructions follow it."""


class Talker:
    """The whole checkpoint: its ``thinker`` serves text as any model does; ``say`` speaks."""

    def __init__(self, name: str, family: Family, source: str, kwargs: dict[str, Any]) -> None:
        if family.speech is None:
            raise ConfigError(f"model {name!r}: options.speech needs a checkpoint that speaks "
                              f"itself (family qwen2.5-omni); {family.name!r} does not")
        self.whole = family.speech(source, **kwargs)
        self.thinker = self.whole.thinker
        self.voices = frozenset(self.whole.speaker_map)
        token2wav = self.whole.config.token2wav_config
        self.samples_per_code = token2wav.dit_config.repeats * math.prod(
            token2wav.bigvgan_config.upsample_rates)
        self.rate = 24000
        talker = self.whole.talker
        self.ends = [talker.codec_pad_token, talker.codec_eos_token]
        """Where the talker stops: ``generate()``'s defaults are the real checkpoint's ids."""

    def say(self, engine: TransformersEngine, request: ModelRequest, options: dict[str, Any],
            cancelled: threading.Event, max_s: float) -> Iterator[AudioChunk | str | Usage]:
        """The answer spoken as ``request.voice``: its audio first (the first piece carries
        the words), then its text, then its ``Usage``. ``max_s`` bounds the speech (the
        talker's tokens)."""
        import torch

        # the whole prompt each time: the talker's generate() takes no session cache
        inputs = engine.full_inputs(replace(request, instructions="\n\n".join(
            filter(None, (SYSTEM, request.instructions)))))
        prompt = int(inputs["input_ids"].shape[1])
        thinker = {f"thinker_{k}": v for k, v in options.items()}  # the cancel check too
        codes = max(1, int(max_s * self.rate / self.samples_per_code))
        with torch.inference_mode():
            sequences, wave = self.whole.generate(
                **inputs, **thinker, speaker=request.voice, return_audio=True,
                talker_stopping_criteria=options["stopping_criteria"],
                talker_max_new_tokens=codes, talker_eos_token_id=self.ends)
        if cancelled.is_set():
            return
        answer = sequences[0, prompt:]
        engine.tokens_generated += int(answer.numel())
        text = str(engine.tokenizer.decode(answer, skip_special_tokens=True)).strip()
        yield from chunked(float_to_pcm16(wave.reshape(-1).float().cpu().numpy()), self.rate,
                           text)
        yield text
        yield usage(prompt, int(answer.numel()), options["max_new_tokens"], None)
