"""A tiny stand-in for MiniCPM-o 2.6 (``modeling_minicpmo.py``).

What it copies from the real code, beyond what MiniCPM-V shares:
- top-level imports of ``soundfile``, ``transformers.LogitsWarper`` and
  ``WHISPER_ATTENTION_CLASSES`` (the last two are gone from transformers 5.x);
- ``vocos`` / ``vector_quantize_pytorch`` are optional at import, but ``init_tts`` (true by
  default in the config) asserts them;
- the audio encoder's layers build their attention through ``WHISPER_ATTENTION_CLASSES`` and
  call it the transformers 4.x way (``layer_head_mask=``, ``past_key_value=``, three results);
- ``chat()`` has no ``system_prompt`` argument (it would land, unused, in ``**kwargs``): a
  ``{"role": "system"}`` message in ``msgs`` is how a system prompt is given, and the first
  message must be the user's or the system's;
- audio (16 kHz numpy arrays) in contents switches to the TTS chat template.
"""

import json
from copy import deepcopy

import numpy as np
import soundfile as sf  # noqa: F401  (imported at the top, as the real code does)
import torch
from PIL import Image
from torch import nn
from transformers import LogitsWarper  # noqa: F401  (gone from transformers 5.x)
from transformers.models.whisper.modeling_whisper import WHISPER_ATTENTION_CLASSES

try:
    from vector_quantize_pytorch import GroupedResidualFSQ  # noqa: F401
    from vocos import Vocos  # noqa: F401

    _tts_deps = True
except ImportError:
    _tts_deps = False

from .configuration_tinyminicpm import TinyMiniCPMOConfig
from .tinyminicpm_common import AUDIO_HOP, AUDIO_TAG, IMAGE_TAG, TinyMiniCPMBase

TTS_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>{% endif %}"
)


class TinyWhisperEncoderLayer(nn.Module):
    """One encoder layer, built and called like MiniCPM-o's ``MiniCPMWhisperEncoderLayer``."""

    def __init__(self, config, layer_idx=None):
        super().__init__()
        self.self_attn = WHISPER_ATTENTION_CLASSES[config._attn_implementation](
            embed_dim=config.d_model,
            num_heads=config.encoder_attention_heads,
            dropout=config.attention_dropout,
            config=config,
            layer_idx=layer_idx,
        )
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, hidden_states, attention_mask=None, layer_head_mask=None,
                output_attentions=False, past_key_values=None):
        residual = hidden_states
        hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, attn_weights, past_key_values = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            layer_head_mask=layer_head_mask,
            output_attentions=output_attentions,
            past_key_value=past_key_values,
        )
        return residual + hidden_states


class TinyMiniCPMO(TinyMiniCPMBase):
    config_class = TinyMiniCPMOConfig

    def __init__(self, config):
        super().__init__(config)
        self._init_llm_and_vision(config)
        if self.config.init_audio:
            d_model = config.audio_config.d_model
            self.apm_in = nn.Linear(AUDIO_HOP, d_model)
            self.apm = TinyWhisperEncoderLayer(config.audio_config)
            self.audio_projection_layer = nn.Linear(d_model, config.hidden_size)
        if self.config.init_tts:
            assert _tts_deps, "please make sure vector_quantize_pytorch and vocos are installed."
            self.tts = nn.Linear(config.hidden_size, 8)

    def embed_audio(self, audio):
        """One part of at most 30 s: the feature extractor drops anything beyond."""
        frames = np.asarray(audio, dtype=np.float32)[: 30 * 16000]
        frames = np.pad(frames, (0, (-frames.size) % AUDIO_HOP)).reshape(1, -1, AUDIO_HOP)
        hidden = self.apm_in(torch.from_numpy(frames).to(self.device, self.dtype))
        return self.audio_projection_layer(self.apm(hidden))[0]

    def chat(self, image=None, msgs=None, tokenizer=None, processor=None,
             vision_hidden_states=None, max_new_tokens=2048, min_new_tokens=0, sampling=True,
             max_inp_length=32768, stream=False, chunk_input=True, omni_input=False,
             max_slice_nums=None, use_image_id=None, use_tts_template=False,
             generate_audio=False, return_spk_embed=False, return_dict=False,
             output_audio_path=None, **kwargs):
        if isinstance(msgs[0], list):
            raise NotImplementedError("batched chat() is not part of this stand-in")
        if isinstance(msgs, str):
            msgs = json.loads(msgs)
        copy_msgs = deepcopy(msgs)

        assert len(msgs) > 0, "msgs is empty"
        assert sampling or not stream, "if use stream mode, make sure sampling=True"

        if image is not None and isinstance(copy_msgs[0]["content"], str):
            copy_msgs[0]["content"] = [image, copy_msgs[0]["content"]]

        images, audios = [], []
        for i, msg in enumerate(copy_msgs):
            role = msg["role"]
            content = msg["content"]
            assert role in ["system", "user", "assistant"]
            if i == 0:
                assert role in ["user", "system"], "The role of first msg should be user"
            if isinstance(content, str):
                content = [content]
            cur_msgs = []
            for c in content:
                if isinstance(c, Image.Image):
                    images.append(c)
                    cur_msgs.append(IMAGE_TAG)
                elif isinstance(c, np.ndarray):  # audio
                    audios.append(c)
                    cur_msgs.append(AUDIO_TAG)
                    use_tts_template = True
                elif isinstance(c, str):
                    cur_msgs.append(c)
            msg["content"] = ("" if omni_input else "\n").join(cur_msgs)

        prompt = tokenizer.apply_chat_template(
            copy_msgs, tokenize=False, add_generation_prompt=True,
            chat_template=TTS_CHAT_TEMPLATE if use_tts_template else None)
        return self._answer(tokenizer, prompt, images, audios, stream, sampling, max_new_tokens,
                            min_new_tokens, kwargs)
