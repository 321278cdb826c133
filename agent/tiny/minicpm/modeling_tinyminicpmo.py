"""A tiny stand-in for MiniCPM-o 2.6 (``modeling_minicpmo.py``).

What it copies from the real code, beyond what MiniCPM-V shares:
- top-level imports of ``soundfile``, ``transformers.LogitsWarper`` and
  ``WHISPER_ATTENTION_CLASSES`` (the last two are gone from transformers 5.x);
- ``vocos`` / ``vector_quantize_pytorch`` are optional at import, but ``init_tts`` (true by
  default in the config) asserts them;
- the audio encoder (``apm``) is Whisper's, its layers built through
  ``WHISPER_ATTENTION_CLASSES`` and called the transformers 4.x way (``layer_head_mask=``,
  ``past_key_value=``, three results); each frame attends up to the end of its 1 s chunk; its
  output goes through ``audio_projection_layer`` then ``audio_avg_pooler`` (25 tokens a
  second), one 30 s part of the audio at a time;
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
from torch.nn import functional as F
from transformers import LogitsWarper  # noqa: F401  (gone from transformers 5.x)
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import WHISPER_ATTENTION_CLASSES, WhisperEncoder

try:
    from vector_quantize_pytorch import GroupedResidualFSQ  # noqa: F401
    from vocos import Vocos  # noqa: F401

    _tts_deps = True
except ImportError:
    _tts_deps = False

from .configuration_tinyminicpm import TinyMiniCPMOConfig
from .tinyminicpm_common import (
    AUDIO_TAG,
    IMAGE_TAG,
    TinyMiniCPMBase,
    chunk_mask,
    fill,
    pooled_length,
)

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
        self.fc1 = nn.Linear(config.d_model, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

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
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.fc2(F.gelu(self.fc1(self.final_layer_norm(hidden_states))))
        return (residual + hidden_states,)


class TinyWhisperEncoder(WhisperEncoder):
    """Whisper's encoder with the layers above and no fixed 30 s input length."""

    def __init__(self, config):
        super().__init__(config)
        self.layers = nn.ModuleList(
            [TinyWhisperEncoderLayer(config, layer_idx=i) for i in range(config.encoder_layers)])

    def forward(self, input_features, attention_mask=None):
        x = input_features.to(self.conv1.weight.dtype)
        x = F.gelu(self.conv2(F.gelu(self.conv1(x)))).permute(0, 2, 1)
        x = x + self.embed_positions.weight[: x.shape[1]]
        for layer in self.layers:
            x = layer(x, attention_mask)[0]
        return BaseModelOutput(last_hidden_state=self.layer_norm(x))


class MultiModalProjector(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, out_dim)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.linear2(self.relu(self.linear1(x)))


class TinyMiniCPMO(TinyMiniCPMBase):
    config_class = TinyMiniCPMOConfig

    def __init__(self, config):
        super().__init__(config)
        self._init_llm_and_vision(config)
        if self.config.init_audio:
            audio = config.audio_config
            self.apm = TinyWhisperEncoder(audio)
            self.audio_avg_pooler = nn.AvgPool1d(config.audio_pool_step,
                                                 stride=config.audio_pool_step)
            self.audio_projection_layer = MultiModalProjector(audio.encoder_ffn_dim // 4,
                                                              self.embed_dim)
        if self.config.init_tts:
            assert _tts_deps, "please make sure vector_quantize_pytorch and vocos are installed."
            self.tts = nn.Linear(config.hidden_size, 8)

    def embed_audio_part(self, features):
        """One part's mel features (mel bins x frames) -> its language-model embeddings."""
        frames = features.shape[-1]
        length = (frames - 1) // 2 + 1
        visible = chunk_mask(length, int(self.config.audio_chunk_length * 50), self.device)
        mask = torch.zeros((1, 1, length, length), dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(~visible, float("-inf"))
        hidden = self.apm(features.unsqueeze(0).to(self.device, self.dtype),
                          attention_mask=mask).last_hidden_state
        pooled = self.audio_avg_pooler(self.audio_projection_layer(hidden).transpose(1, 2))
        return pooled.transpose(1, 2)[0, : pooled_length(frames, self.config.audio_pool_step)]

    def get_vllm_embedding(self, inputs):
        embeds = super().get_vllm_embedding(inputs)
        features, part = inputs.get("audio_features"), 0
        for b, counts in enumerate(inputs.get("audio_feature_lens") or []):
            parts = []
            for frames in (counts.tolist() if torch.is_tensor(counts) else counts):
                parts.append(self.embed_audio_part(features[part][:, :frames]))
                part += 1
            if parts:
                fill(embeds[b], inputs["audio_bounds"][b], torch.cat(parts))
        return embeds

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
        inputs = self._processor(processor)(
            [prompt], [images], [audios], max_slice_nums=max_slice_nums,
            use_image_id=use_image_id, chunk_input=chunk_input, return_tensors="pt",
            max_length=max_inp_length)
        return self._answer(tokenizer, inputs, stream, sampling, max_new_tokens, min_new_tokens,
                            kwargs)
