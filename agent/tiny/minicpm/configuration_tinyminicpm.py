"""Tiny stand-ins for the MiniCPM-V 2.6 / MiniCPM-o 2.6 configs.

As in the real ``configuration_minicpm.py``, the config *is* the Qwen2 language model's config
(``self.llm = Qwen2ForCausalLM(config)``), and MiniCPM-o's adds ``init_vision``, ``init_audio``
and ``init_tts`` (all true by default), and a Whisper ``audio_config``.
"""

from transformers import Qwen2Config, WhisperConfig


class TinyMiniCPMVConfig(Qwen2Config):
    model_type = "tiny_minicpmv"

    def __init__(self, query_num=4, **kwargs):
        self.query_num = query_num
        super().__init__(**kwargs)


class TinyMiniCPMOConfig(Qwen2Config):
    model_type = "tiny_minicpmo"

    def __init__(self, query_num=4, audio_config=None, audio_pool_step=2, init_vision=True,
                 init_audio=True, init_tts=True, **kwargs):
        self.query_num = query_num
        self.audio_pool_step = audio_pool_step
        self.init_vision = init_vision
        self.init_audio = init_audio
        self.init_tts = init_tts
        if isinstance(audio_config, dict) or audio_config is None:
            audio_config = WhisperConfig(**(audio_config or {}))
        self.audio_config = audio_config
        super().__init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        if isinstance(self.audio_config, WhisperConfig):
            out["audio_config"] = self.audio_config.to_dict()
        return out
