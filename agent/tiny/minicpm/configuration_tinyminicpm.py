"""Tiny stand-ins for the MiniCPM-V 2.6 / MiniCPM-o 2.6 configs (``configuration_minicpm.py``).

As in the real ones, the config *is* the Qwen2 language model's config
(``self.llm = Qwen2ForCausalLM(config)``), with ``model_type`` ``minicpmv`` / ``minicpmo``,
``version`` 2.6, a SigLIP ``vision_config``, the resampler's ``query_num`` and the slicing
settings (``slice_config``); MiniCPM-o's adds ``init_vision``, ``init_audio`` and ``init_tts``
(all true by default), a Whisper ``audio_config``, ``audio_pool_step`` and
``audio_chunk_length``. vLLM's native ``MiniCPMV`` / ``MiniCPMO`` read these same fields.
"""

from transformers import Qwen2Config, SiglipVisionConfig, WhisperConfig


def _sub_config(cls, value):
    return cls(**(value or {})) if isinstance(value, dict) or value is None else value


class TinyMiniCPMVConfig(Qwen2Config):
    model_type = "minicpmv"

    def __init__(self, use_cache=True, query_num=64, image_size=448, drop_vision_last_layer=True,
                 batch_vision_input=True, slice_config=None, vision_config=None,
                 use_image_id=True, vision_batch_size=16, slice_mode=True, version=2.6,
                 **kwargs):
        self.use_cache = use_cache
        self.query_num = query_num
        self.image_size = image_size
        self.drop_vision_last_layer = drop_vision_last_layer
        self.batch_vision_input = batch_vision_input
        self.use_image_id = use_image_id
        self.vision_batch_size = vision_batch_size
        self.version = version
        self.slice_config = dict(slice_config or {"max_slice_nums": 9, "patch_size": 14})
        self.slice_mode = slice_mode
        self.vision_config = _sub_config(SiglipVisionConfig, vision_config)
        self.patch_size = self.vision_config.patch_size
        super().__init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        for key in ("vision_config", "audio_config"):
            if hasattr(getattr(self, key, None), "to_dict"):
                out[key] = getattr(self, key).to_dict()
        return out


class TinyMiniCPMOConfig(TinyMiniCPMVConfig):
    model_type = "minicpmo"

    def __init__(self, audio_config=None, tts_config=None, audio_pool_step=2,
                 audio_chunk_length=1.0, init_vision=True, init_audio=True, init_tts=True,
                 stream_input=False, **kwargs):
        self.audio_pool_step = audio_pool_step
        self.audio_chunk_length = audio_chunk_length
        self.init_vision = init_vision
        self.init_audio = init_audio
        self.init_tts = init_tts
        self.stream_input = stream_input
        self.audio_config = _sub_config(WhisperConfig, audio_config)
        self.tts_config = dict(tts_config or {})
        super().__init__(**kwargs)
