"""A tiny stand-in for MiniCPM-V 2.6 / MiniCPM-o 2.6 with the same ``chat`` API.

Like the real models: a Qwen2 language model in ``self.llm``, images (and, for -o, 16 kHz audio
as numpy arrays) given inside ``msgs`` contents, ``chat(..., stream=True)`` returning a
generator of text, generation options filtered to known keys. The vision and audio encoders
are single linear layers: the output is gibberish, the plumbing is real.
"""

import threading

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM, TextIteratorStreamer

from .configuration_tinyminicpm import TinyMiniCPMConfig

PATCH = 14 * 14 * 3
AUDIO_FRAME = 400


class TinyMiniCPM(PreTrainedModel):
    config_class = TinyMiniCPMConfig
    base_model_prefix = "llm"
    _no_split_modules = []

    def __init__(self, config):
        super().__init__(config)
        self.llm = Qwen2ForCausalLM(Qwen2Config(**config.text_config))
        hidden = self.llm.config.hidden_size
        self.vpm = nn.Linear(PATCH, hidden)
        self.apm = nn.Linear(AUDIO_FRAME, hidden)
        self.post_init()

    def _image(self, image):
        pixels = np.asarray(image.convert("RGB").resize((28, 28)), dtype=np.float32) / 255.0
        patches = pixels.reshape(2, 14, 2, 14, 3).transpose(0, 2, 1, 3, 4).reshape(4, PATCH)
        return self.vpm(torch.from_numpy(patches).to(self.device, self.dtype))

    def _audio(self, audio):
        frames = np.asarray(audio, dtype=np.float32)[: 64 * AUDIO_FRAME]
        frames = np.pad(frames, (0, (-frames.size) % AUDIO_FRAME)).reshape(-1, AUDIO_FRAME)
        return self.apm(torch.from_numpy(frames).to(self.device, self.dtype))

    def chat(self, image, msgs, tokenizer, processor=None, max_new_tokens=2048,
             min_new_tokens=0, sampling=True, system_prompt="", stream=False, **kwargs):
        embed = self.llm.get_input_embeddings()
        pieces = []

        def text(s):
            ids = tokenizer(s, return_tensors="pt", add_special_tokens=False).input_ids
            pieces.append(embed(ids.to(self.device))[0])

        if system_prompt:
            text(f"<|im_start|>system\n{system_prompt}<|im_end|>\n")
        for msg in msgs:
            text(f"<|im_start|>{msg['role']}\n")
            for part in msg["content"]:
                if isinstance(part, str):
                    text(part)
                elif isinstance(part, np.ndarray):
                    if not self.config.audio:
                        raise ValueError("this model takes no audio (MiniCPM-V); use MiniCPM-o")
                    pieces.append(self._audio(part))
                else:
                    pieces.append(self._image(part))
            text("<|im_end|>\n")
        text("<|im_start|>assistant\n")
        inputs_embeds = torch.cat(pieces).unsqueeze(0)
        if sampling:
            config = {"top_p": 0.8, "top_k": 100, "temperature": 0.7, "do_sample": True,
                      "repetition_penalty": 1.05}
        else:
            config = {"num_beams": 3, "repetition_penalty": 1.2}
        if min_new_tokens > 0:
            config["min_new_tokens"] = min_new_tokens
        config.update((k, kwargs[k]) for k in config.keys() & kwargs.keys())
        args = dict(inputs_embeds=inputs_embeds, max_new_tokens=max_new_tokens,
                    attention_mask=torch.ones(inputs_embeds.shape[:2], device=self.device),
                    eos_token_id=tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]),
                    pad_token_id=tokenizer.pad_token_id, **config)
        if not stream:
            with torch.inference_mode():
                out = self.llm.generate(**args)
            return tokenizer.decode(out[0], skip_special_tokens=True)
        streamer = TextIteratorStreamer(tokenizer, skip_special_tokens=True)

        def run():
            with torch.inference_mode():
                self.llm.generate(**args, streamer=streamer)

        threading.Thread(target=run, daemon=True).start()

        def gen():
            for piece in streamer:
                yield piece

        return gen()
