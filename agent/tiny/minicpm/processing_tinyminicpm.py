"""Stand-ins for MiniCPM-V 2.6 / MiniCPM-o 2.6's processors (``processing_minicpmv.py``,
``processing_minicpmo.py``), written for the tiny checkpoints.

What callers rely on:
- ``(<image>./</image>)`` in the text becomes the image processor's placeholder for that image
  (``<image>``, ``<unk>`` × features, ``</image>``, the slices); ``(<audio>./</audio>)``
  becomes ``<|audio_start|>`` + ``<unk>`` × n + ``<|audio_end|>``, one such group per second
  with ``chunk_input`` (n: the audio's length in 10 ms frames, halved by the encoder's
  convolution and again by the pooling: 25 a second).
- Audio over 30 s goes to the Whisper feature extractor in 30 s parts (it keeps at most 30 s of
  each); the placeholder counts the whole audio.
- Outputs: ``input_ids`` (left-padded), ``attention_mask``, the image processor's
  ``pixel_values`` / ``image_sizes`` / ``tgt_sizes``, ``image_bound`` (per prompt, the
  [start, end) of each run of ``<unk>`` between ``<image>``/``<slice>`` and its end token),
  and for MiniCPM-o ``audio_features``, ``audio_feature_lens``, ``audio_bounds`` and
  ``spk_bounds``.
vLLM's native implementation takes only the tokenizer (and MiniCPM-o's feature extractor) from
these and processes with its own copy of the real processor.
"""

import math
import re

import numpy as np
import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

IMAGE_TAG, AUDIO_TAG = "(<image>./</image>)", "(<audio>./</audio>)"
SPLIT = re.compile(r"(\(<image>\./</image>\)|\(<audio>\./</audio>\))")
MAX_AUDIO_S = 30


def bounds(ids, starts, ends):
    """[start + 1, end) of each span opened by one of ``starts`` and closed by one of ``ends``."""
    opened = torch.where(torch.isin(ids, torch.tensor(starts)))[0] + 1
    closed = torch.where(torch.isin(ids, torch.tensor(ends)))[0]
    assert len(opened) == len(closed), "unbalanced start and end tokens"
    return torch.stack([opened, closed], dim=-1) if len(opened) else torch.zeros((0, 2),
                                                                                  dtype=torch.long)


class TinyMiniCPMVProcessor(ProcessorMixin):
    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, text, images=None, max_length=None, do_pad=True, max_slice_nums=None,
                 use_image_id=None, return_tensors="pt", **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        pictures = None
        if images is not None:
            pictures = self.image_processor(images, do_pad=do_pad, max_slice_nums=max_slice_nums,
                                            return_tensors=return_tensors)
        data = self._inputs(texts, pictures, None, max_length, max_slice_nums, use_image_id)
        return BatchFeature(data=data)

    def _placeholder(self, pictures, index, image_id, max_slice_nums, use_image_id):
        size = pictures["image_sizes"][index][image_id]
        return self.image_processor.get_slice_image_placeholder(
            size, image_id, max_slice_nums, use_image_id)

    def _inputs(self, texts, pictures, sounds, max_length, max_slice_nums, use_image_id):
        rows, image_bounds, audio_bounds, spk_bounds = [], [], [], []
        tok = self.tokenizer
        for index, text in enumerate(texts):
            chunks, images, audios = SPLIT.split(text), 0, 0
            for i, chunk in enumerate(chunks):
                if chunk == IMAGE_TAG:
                    chunks[i] = self._placeholder(pictures, index, images, max_slice_nums,
                                                  use_image_id)
                    images += 1
                elif chunk == AUDIO_TAG:
                    chunks[i] = sounds[index][audios]
                    audios += 1
            ids = torch.tensor(tok.encode("".join(chunks))[:max_length], dtype=torch.int64)
            rows.append(ids)
            image_bounds.append(bounds(ids, [tok.im_start_id, tok.slice_start_id],
                                       [tok.im_end_id, tok.slice_end_id]))
            audio_bounds.append(bounds(ids, [tok.audio_start_id], [tok.audio_end_id]))
            spk_bounds.append(bounds(ids, [tok.spk_start_id], [tok.spk_end_id]))
        width = max(len(r) for r in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.int64)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):  # left padding: the bounds move right
            pad = width - len(row)
            input_ids[i, pad:], attention_mask[i, pad:] = row, True
            image_bounds[i], audio_bounds[i], spk_bounds[i] = (
                image_bounds[i] + pad, audio_bounds[i] + pad, spk_bounds[i] + pad)
        empty = [[] for _ in texts]
        data = {"input_ids": input_ids, "attention_mask": attention_mask,
                "pixel_values": pictures["pixel_values"] if pictures else empty,
                "image_sizes": pictures["image_sizes"] if pictures else empty,
                "tgt_sizes": pictures["tgt_sizes"] if pictures else empty,
                "image_bound": image_bounds}
        if sounds is not None:
            data.update(audio_bounds=audio_bounds, spk_bounds=spk_bounds)
        return data


class TinyMiniCPMOProcessor(TinyMiniCPMVProcessor):
    def __init__(self, image_processor=None, feature_extractor=None, tokenizer=None, **kwargs):
        ProcessorMixin.__init__(self, image_processor, feature_extractor, tokenizer, **kwargs)
        self.pool_step = 2

    def __call__(self, text, images=None, audios=None, audio_parts=None, max_length=None,
                 do_pad=True, max_slice_nums=None, use_image_id=True, chunk_input=False,
                 return_tensors="pt", sampling_rate=16000, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        pictures = None
        if images is not None:
            pictures = self.image_processor(images, do_pad=do_pad, max_slice_nums=max_slice_nums,
                                            return_tensors=return_tensors)
        batches = _audio_batches(audios, len(texts))
        sounds = [[self.get_audio_placeholder(len(a), chunk_input) for a in b] for b in batches]
        data = self._inputs(texts, pictures, sounds, max_length, max_slice_nums, use_image_id)
        data["audio_features"], data["audio_feature_lens"] = self.audio_feature_extract(
            batches, sampling_rate)
        return BatchFeature(data=data)

    def get_audio_placeholder(self, samples, chunk_input=True, chunk_length=1):
        frames = math.ceil(samples / self.feature_extractor.hop_length)
        tokens = (((frames - 1) // 2 + 1) - self.pool_step) // self.pool_step + 1
        per_chunk = ((int(chunk_length * 100) - 1) // 2 + 1 - self.pool_step) // self.pool_step + 1
        sizes = [tokens]
        if chunk_input:
            sizes = [min(per_chunk, tokens - done) for done in range(0, tokens, per_chunk)]
        tok = self.tokenizer
        return "".join(tok.audio_start + "<unk>" * n + tok.audio_end for n in sizes)

    def audio_feature_extract(self, batches, sampling_rate=16000):
        """Mel features of each audio's 30 s parts (padded to the longest), and per prompt the
        number of frames each part really has."""
        longest = MAX_AUDIO_S * sampling_rate
        features, lens = [], []
        for audios in batches:
            parts = [a[i:i + longest] for a in audios for i in range(0, max(len(a), 1), longest)]
            if not parts:
                lens.append([])
                continue
            out = self.feature_extractor(parts, sampling_rate=sampling_rate, padding="max_length",
                                         return_attention_mask=True, return_tensors="pt")
            counts = out["attention_mask"].sum(dim=1)
            features += [f[:, :n] for f, n in zip(out["input_features"], counts)]
            lens.append(counts)
        if not features:
            return [], lens
        padded = torch.nn.utils.rnn.pad_sequence([f.T for f in features], batch_first=True)
        return padded.permute(0, 2, 1), lens


def _audio_batches(audios, count):
    if audios is None:
        return [[] for _ in range(count)]
    if isinstance(audios, np.ndarray):
        return [[audios]]
    if audios and isinstance(audios[0], np.ndarray):
        return [list(audios)]
    return [list(a) for a in audios]
