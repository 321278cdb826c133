"""A tiny stand-in for MiniCPM-V / MiniCPM-o: same remote-code loading, same ``chat`` API."""

from transformers import PretrainedConfig


class TinyMiniCPMConfig(PretrainedConfig):
    model_type = "tiny_minicpm"

    def __init__(self, text_config=None, audio=False, **kwargs):
        self.text_config = text_config or {}
        self.audio = audio
        super().__init__(**kwargs)
