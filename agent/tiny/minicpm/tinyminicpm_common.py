"""What the tiny MiniCPM-V and MiniCPM-o stand-ins share.

The modules and weight names are the real checkpoints' (``llm.*``: Qwen2; ``vpm.*``: a SigLIP
vision transformer; ``resampler.*``: one cross-attention from ``query_num`` learned queries,
with 2-D sin-cos positions), so vLLM's native ``MiniCPMV`` / ``MiniCPMO`` load the same
checkpoint. Each piece copies the behaviour of the real MiniCPM-V 2.6 / MiniCPM-o 2.6 remote
code (``modeling_minicpmv.py``, ``modeling_minicpmo.py``) that a caller can see:
- ``chat()`` renders the messages with the tokenizer's chat template, images and audio as
  ``(<image>./</image>)`` / ``(<audio>./</audio>)``, and runs the checkpoint's processor
  (loaded with ``AutoProcessor`` from ``config._name_or_path`` unless one is given): the
  features of each image slice replace the ``<unk>`` tokens of its placeholder.
- ``chat()`` keeps only the generation options its own defaults name: with ``sampling=True``
  those are ``top_p``, ``top_k``, ``temperature``, ``do_sample`` and ``repetition_penalty``
  (``min_new_tokens`` too when it is above 0). Anything else, a stopping criterion included,
  is dropped without a word.
- ``stream=True`` runs the language model's ``generate`` in a plain thread behind a
  ``TextIteratorStreamer`` that has no timeout: if that thread raises, the iterator waits
  forever.
The encoders are tiny; the output is gibberish, the plumbing is real.
"""

from threading import Thread

import torch
from torch import nn
from transformers import (
    AutoProcessor,
    Qwen2ForCausalLM,
    Qwen2PreTrainedModel,
    TextIteratorStreamer,
)
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer

IMAGE_TAG = "(<image>./</image>)"
AUDIO_TAG = "(<audio>./</audio>)"


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


def sincos_2d(dim, height, width):
    """(height·width) × dim: sin/cos of the column, then of the row (as MiniCPM-V 2.5+)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                                torch.arange(width, dtype=torch.float32), indexing="ij")
    parts = [torch.outer(axis.reshape(-1), omega) for axis in (cols, rows)]
    return torch.cat([f(p) for p in parts for f in (torch.sin, torch.cos)], dim=-1)


class Resampler(nn.Module):
    """``query_num`` queries attend to one slice's patch features (plus their 2-D positions)."""

    def __init__(self, num_queries, embed_dim, num_heads, kv_dim):
        super().__init__()
        self.embed_dim = embed_dim
        self.query = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q, self.ln_kv, self.ln_post = (nn.LayerNorm(embed_dim, eps=1e-6)
                                               for _ in range(3))
        self.proj = nn.Parameter(embed_dim ** -0.5 * torch.randn(embed_dim, embed_dim))

    def forward(self, x, tgt_size):
        """x: patches × kv_dim of one slice of ``tgt_size`` (rows, columns) patches."""
        h, w = (int(v) for v in tgt_size)
        pos = sincos_2d(self.embed_dim, h, w).to(x.device, x.dtype)
        kv = self.ln_kv(self.kv_proj(x)).unsqueeze(1)
        q = self.ln_q(self.query).unsqueeze(1)
        out = self.attn(q, kv + pos.unsqueeze(1), kv, need_weights=False)[0][:, 0]
        return self.ln_post(out) @ self.proj


class TinyMiniCPMBase(Qwen2PreTrainedModel):
    """The language model, vision encoder and resampler. Like the real classes, ``__init__``
    of the top-level models never calls ``post_init()``."""

    def _init_llm_and_vision(self, config):
        self.processor = None
        self.llm = Qwen2ForCausalLM(config)
        vision = config.vision_config
        vision._attn_implementation = "eager"
        self.vpm = Idefics2VisionTransformer(vision)
        if config.drop_vision_last_layer:
            self.vpm.encoder.layers = self.vpm.encoder.layers[:-1]
        self.embed_dim = config.hidden_size
        self.resampler = Resampler(config.query_num, self.embed_dim, self.embed_dim // 128,
                                   vision.hidden_size)
        self.terminators = ["<|im_end|>", "<|endoftext|>"]

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def _processor(self, processor):
        if processor is not None:
            return processor
        if self.processor is None:
            self.processor = AutoProcessor.from_pretrained(self.config._name_or_path,
                                                           trust_remote_code=True)
        return self.processor

    def embed_slice(self, pixels, tgt_size):
        """One slice (3 × patch × patches·patch, as the processor lays it out) -> query_num
        embeddings."""
        p = self.config.vision_config.patch_size
        h, w = (int(v) for v in tgt_size)
        image = pixels.reshape(3, p, h, w, p).permute(0, 2, 1, 3, 4).reshape(3, h * p, w * p)
        image = image.unsqueeze(0).to(self.device, self.vpm.dtype)
        return self.resampler(self.vpm(pixel_values=image).last_hidden_state[0], tgt_size)

    def get_vllm_embedding(self, inputs):
        """The prompt's token embeddings, each image slice's features over its ``<unk>``s."""
        embeds = self.llm.get_input_embeddings()(inputs["input_ids"].to(self.device))
        for b in range(len(embeds)):
            pixels, tgt_sizes = inputs["pixel_values"][b], inputs["tgt_sizes"][b]
            if len(pixels):
                features = torch.cat([self.embed_slice(pv, t) for pv, t in zip(pixels, tgt_sizes)])
                fill(embeds[b], inputs["image_bound"][b], features)
        return embeds

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

    def _answer(self, tokenizer, inputs, stream, sampling, max_new_tokens, min_new_tokens,
                kwargs):
        config = generation_config(sampling, min_new_tokens, kwargs)
        with torch.inference_mode():
            inputs_embeds = self.get_vllm_embedding(inputs)
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


def fill(embeds, spans, features):
    """Put ``features`` (rows) over the positions of ``spans`` ([start, end) pairs), in order."""
    index = [i for start, end in spans.tolist() for i in range(start, end)]
    count = min(len(index), len(features))
    embeds[index[:count]] = features[:count].to(embeds.dtype)


def chunk_mask(size, chunk, device):
    """Each frame sees every frame up to the end of its own ``chunk``-frame chunk."""
    pos = torch.arange(size, device=device)
    return pos.unsqueeze(0) < ((pos // chunk + 1) * chunk).clamp(max=size).unsqueeze(1)


def pooled_length(frames, pool_step):
    """Language-model tokens from ``frames`` 10 ms mel frames (conv stride 2, then pooling)."""
    return ((frames - 1) // 2 + 1 - pool_step) // pool_step + 1

