"""What the tiny MiniCPM-V and MiniCPM-o stand-ins share.

Each piece copies the behaviour of the real MiniCPM-V 2.6 / MiniCPM-o 2.6 remote code
(``modeling_minicpmv.py``, ``modeling_minicpmo.py``, ``processing_minicpmo.py``) that a caller
can see:
- ``chat()`` keeps only the generation options its own defaults name: with ``sampling=True``
  those are ``top_p``, ``top_k``, ``temperature``, ``do_sample`` and ``repetition_penalty``
  (``min_new_tokens`` too when it is above 0). Anything else, a stopping criterion included,
  is dropped without a word.
- ``stream=True`` runs the language model's ``generate`` in a plain thread behind a
  ``TextIteratorStreamer`` that has no timeout: if that thread raises, the iterator waits
  forever.
- Images and audio are given inside ``msgs`` and become ``(<image>./</image>)`` /
  ``(<audio>./</audio>)`` placeholders in the text the tokenizer's chat template renders.
- Audio longer than 30 s is split into 30 s parts (the Whisper feature extractor keeps at most
  30 s of each part), about 25 language-model tokens a second.
The vision and audio encoders are tiny; the output is gibberish, the plumbing is real.
"""

import re
from threading import Thread

import numpy as np
import torch
from torch import nn
from transformers import Qwen2ForCausalLM, Qwen2PreTrainedModel, TextIteratorStreamer

IMAGE_TAG = "(<image>./</image>)"
AUDIO_TAG = "(<audio>./</audio>)"
SAMPLE_RATE = 16000
MAX_AUDIO_INP_LEN = 30 * SAMPLE_RATE
AUDIO_HOP = 640  # samples per language-model token: hop 160, conv stride 2, pool step 2
PATCH = 14 * 14 * 3


def generation_config(sampling, min_new_tokens, kwargs):
    if sampling:
        config = {"top_p": 0.8, "top_k": 100, "temperature": 0.7, "do_sample": True,
                  "repetition_penalty": 1.05}
    else:
        config = {"num_beams": 3, "repetition_penalty": 1.2}
    if min_new_tokens > 0:
        config["min_new_tokens"] = min_new_tokens
    config.update((k, kwargs[k]) for k in config.keys() & kwargs.keys())
    return config


def audio_parts(audio):
    """processing_minicpmo: audio over 30 s becomes consecutive 30 s parts."""
    if len(audio) <= MAX_AUDIO_INP_LEN:
        return [audio]
    n = -(-len(audio) // MAX_AUDIO_INP_LEN)
    return [audio[i * MAX_AUDIO_INP_LEN:(i + 1) * MAX_AUDIO_INP_LEN] for i in range(n)]


class TinyMiniCPMBase(Qwen2PreTrainedModel):
    """The language model and vision encoder. Like the real classes, ``__init__`` of the
    top-level models never calls ``post_init()``."""

    terminators = ["<|im_end|>", "<|endoftext|>"]

    def _init_llm_and_vision(self, config):
        self.llm = Qwen2ForCausalLM(config)
        self.vpm = nn.Linear(PATCH, config.hidden_size)

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def embed_image(self, image):
        pixels = np.asarray(image.convert("RGB").resize((28, 28)), dtype=np.float32) / 255.0
        patches = pixels.reshape(2, 14, 2, 14, 3).transpose(0, 2, 1, 3, 4).reshape(4, PATCH)
        return self.vpm(torch.from_numpy(patches).to(self.device, self.dtype))

    def embed_audio(self, audio):
        raise ValueError("this model takes no audio")

    def embed_prompt(self, tokenizer, text, images, audios):
        embed = self.llm.get_input_embeddings()
        images, audios = iter(images), iter(audios)
        pieces = []
        for part in re.split(r"(\(<image>\./</image>\)|\(<audio>\./</audio>\))", text):
            if part == IMAGE_TAG:
                pieces.append(self.embed_image(next(images)))
            elif part == AUDIO_TAG:
                pieces += [self.embed_audio(p) for p in audio_parts(next(audios))]
            elif part:
                ids = tokenizer(part, return_tensors="pt", add_special_tokens=False).input_ids
                pieces.append(embed(ids.to(self.device))[0])
        return torch.cat(pieces).unsqueeze(0)

    def _decode(self, inputs_embeds, tokenizer, **kwargs):
        terminators = [tokenizer.convert_tokens_to_ids(i) for i in self.terminators]
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=self.device)
        out = self.llm.generate(inputs_embeds=inputs_embeds, pad_token_id=0,
                                eos_token_id=terminators, attention_mask=mask, **kwargs)
        return tokenizer.decode(out[0], skip_special_tokens=True).strip()

    def _decode_stream(self, inputs_embeds, tokenizer, **kwargs):
        terminators = [tokenizer.convert_tokens_to_ids(i) for i in self.terminators]
        streamer = TextIteratorStreamer(tokenizer=tokenizer)
        generation_kwargs = {"inputs_embeds": inputs_embeds, "pad_token_id": 0,
                             "eos_token_id": terminators, "streamer": streamer}
        generation_kwargs.update(kwargs)
        thread = Thread(target=self.llm.generate, kwargs=generation_kwargs)
        thread.start()
        return streamer

    def _answer(self, tokenizer, prompt, images, audios, stream, sampling, max_new_tokens,
                min_new_tokens, kwargs):
        config = generation_config(sampling, min_new_tokens, kwargs)
        with torch.inference_mode():
            inputs_embeds = self.embed_prompt(tokenizer, prompt, images, audios)
            if not stream:
                return self._decode(inputs_embeds, tokenizer, max_new_tokens=max_new_tokens,
                                    **config)
            res = self._decode_stream(inputs_embeds, tokenizer, max_new_tokens=max_new_tokens,
                                      **config)

        def stream_gen():
            for text in res:
                for term in self.terminators:
                    text = text.replace(term, "")
                yield text

        return stream_gen()
