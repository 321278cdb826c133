"""A tiny stand-in for MiniCPM-V 2.6 (``modeling_minicpmv.py``), with its ``chat()`` rules:
- ``assert sampling or not stream``;
- every message is the user's or the assistant's, and the first is the user's;
- the system prompt is the ``system_prompt`` argument, prepended as a system turn;
- contents hold text and PIL images; anything else (audio) is dropped;
- ``max_slice_nums`` and ``use_image_id`` go to the processor (video frames: fewer slices,
  no image ids).
"""

import json
from copy import deepcopy

from PIL import Image

from .configuration_tinyminicpm import TinyMiniCPMVConfig
from .tinyminicpm_common import IMAGE_TAG, TinyMiniCPMBase


class TinyMiniCPMV(TinyMiniCPMBase):
    config_class = TinyMiniCPMVConfig

    def __init__(self, config):
        super().__init__(config)
        self._init_llm_and_vision(config)

    def chat(self, image, msgs, tokenizer, processor=None, vision_hidden_states=None,
             max_new_tokens=2048, min_new_tokens=0, sampling=True, max_inp_length=8192,
             system_prompt="", stream=False, max_slice_nums=None, use_image_id=None,
             **kwargs):
        if isinstance(msgs[0], list):
            raise NotImplementedError("batched chat() is not part of this stand-in")
        if isinstance(msgs, str):
            msgs = json.loads(msgs)
        copy_msgs = deepcopy(msgs)

        assert len(msgs) > 0, "msgs is empty"
        assert sampling or not stream, "if use stream mode, make sure sampling=True"

        if image is not None and isinstance(copy_msgs[0]["content"], str):
            copy_msgs[0]["content"] = [image, copy_msgs[0]["content"]]

        images = []
        for i, msg in enumerate(copy_msgs):
            role = msg["role"]
            content = msg["content"]
            assert role in ["user", "assistant"]
            if i == 0:
                assert role == "user", "The role of first msg should be user"
            if isinstance(content, str):
                content = [content]
            cur_msgs = []
            for c in content:
                if isinstance(c, Image.Image):
                    images.append(c)
                    cur_msgs.append(IMAGE_TAG)
                elif isinstance(c, str):
                    cur_msgs.append(c)
            msg["content"] = "\n".join(cur_msgs)

        if system_prompt:
            copy_msgs = [{"role": "system", "content": system_prompt}] + copy_msgs

        prompt = tokenizer.apply_chat_template(copy_msgs, tokenize=False,
                                               add_generation_prompt=True)
        inputs = self._processor(processor)(
            [prompt], [images], max_slice_nums=max_slice_nums, use_image_id=use_image_id,
            return_tensors="pt", max_length=max_inp_length)
        return self._answer(tokenizer, inputs, stream, sampling, max_new_tokens, min_new_tokens,
                            kwargs)
