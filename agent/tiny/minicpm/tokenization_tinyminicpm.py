"""A stand-in for MiniCPM-V 2.6 / MiniCPM-o 2.6's tokenizer (``tokenization_minicpm*_fast.py``):
the Qwen2 tokenizer, naming the special tokens their processors (and vLLM's) look up by
attribute: ``im_start_id`` (``<image>``), ``slice_start_id`` (``<slice>``), ``im_id_start``
(``<image_id>``), ``audio_start_id`` (``<|audio_start|>``), ``spk_start_id`` (``<|spk_bos|>``),
``unk_id`` (``<unk>``, the token the image and audio features replace) and the rest.
"""

from transformers import Qwen2Tokenizer

NAMES = dict(im_start="<image>", im_end="</image>", ref_start="<ref>", ref_end="</ref>",
             box_start="<box>", box_end="</box>", quad_start="<quad>", quad_end="</quad>",
             slice_start="<slice>", slice_end="</slice>", im_id_start="<image_id>",
             im_id_end="</image_id>", audio_start="<|audio_start|>", audio_end="<|audio_end|>",
             spk_start="<|spk_bos|>", spk_end="<|spk_eos|>", tts_start="<|tts_bos|>",
             tts_end="<|tts_eos|>")


class TinyMiniCPMTokenizer(Qwen2Tokenizer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, token in NAMES.items():
            setattr(self, name, token)
        self.image_tag = "(<image>./</image>)"
        self.audio_tag = "(<audio>./</audio>)"
        self.terminator_tokens = ["<|im_end|>", "<|endoftext|>", self.tts_end]

    def _id(self, name):
        return self.convert_tokens_to_ids(NAMES[name])

    eos_id = property(lambda self: self.eos_token_id)
    bos_id = property(lambda self: self.bos_token_id)
    unk_id = property(lambda self: self.unk_token_id)
    terminators = property(lambda self: self.terminator_tokens)
    terminator_ids = property(lambda self: [self.convert_tokens_to_ids(t)
                                            for t in self.terminator_tokens])
    im_start_id = property(lambda self: self._id("im_start"))
    im_end_id = property(lambda self: self._id("im_end"))
    slice_start_id = property(lambda self: self._id("slice_start"))
    slice_end_id = property(lambda self: self._id("slice_end"))
    im_id_start_id = property(lambda self: self._id("im_id_start"))
    im_id_end_id = property(lambda self: self._id("im_id_end"))
    audio_start_id = property(lambda self: self._id("audio_start"))
    audio_end_id = property(lambda self: self._id("audio_end"))
    spk_start_id = property(lambda self: self._id("spk_start"))
    spk_end_id = property(lambda self: self._id("spk_end"))
    tts_start_id = property(lambda self: self._id("tts_start"))
    tts_end_id = property(lambda self: self._id("tts_end"))
