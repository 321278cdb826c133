"""Model families for the transformers engine: how each loads and how a request becomes inputs.

Every family builds chat messages (instructions, few-shot examples, history, then the user's
media and question) and lets the checkpoint's own processor and chat template do the rest, so
real checkpoints and the tiny test ones go through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from agent import AUDIO_RATE, ModelRequest
from agent.media import RGB
from plugins.hf import long_audio

MAX_VIDEO_FRAMES = 64


@dataclass(frozen=True)
class Family:
    name: str
    model_class: str
    modalities: frozenset[str]
    remote_code: bool = False

    def load(self, source: str, **kwargs: Any) -> Any:
        import transformers

        if self.remote_code:
            return transformers.AutoModel.from_pretrained(source, trust_remote_code=True,
                                                          **kwargs)
        cls = getattr(transformers, self.model_class)
        if self.name == "qwen2.5-omni":
            config = transformers.AutoConfig.from_pretrained(source)
            if config.model_type == "qwen2_5_omni":  # the full model: keep its thinker only
                full = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
                    source, enable_audio_output=False, **kwargs)
                return full.thinker
        return cls.from_pretrained(source, **kwargs)

    def inputs(self, processor: Any, request: ModelRequest, max_pixels: int) -> Any:
        """Processor outputs (tensors) for ``request``."""
        images = [fit(img, max_pixels) for img, _ in request.examples]
        images += [fit(img, max_pixels) for img in request.images]
        content: list[dict[str, Any]] = [{"type": "image"} for _ in request.images]
        kwargs: dict[str, Any] = {}
        if request.video and "video" in self.modalities:
            frames = np.stack([fit(f, max_pixels) for f in subsample(request.video)])
            fps = request.video_fps * len(frames) / len(request.video)  # after subsampling
            content.append({"type": "video"})
            # Qwen2.5-Omni's processor reads fps from the kwargs, the others from the metadata
            kwargs.update(videos=[frames], do_sample_frames=False, fps=fps, video_metadata=[{
                "total_num_frames": len(frames), "fps": fps, "duration": len(frames) / fps}])
        if request.audio is not None and "audio" in self.modalities:
            parts = long_audio.split(request.audio, long_audio.encoder_window(processor))
            content += [{"type": "audio"} for _ in parts]
            kwargs.update(audio=parts, sampling_rate=AUDIO_RATE)
        text = processor.apply_chat_template(messages(request, content), tokenize=False,
                                             add_generation_prompt=True)
        if images:
            kwargs["images"] = images
        return processor(text=[text], return_tensors="pt", **kwargs)


def messages(request: ModelRequest, content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    if request.instructions:
        msgs.append({"role": "system", "content": [{"type": "text", "text": request.instructions}]})
    for _, answer in request.examples:
        msgs.append({"role": "user", "content": [{"type": "image"}]})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    for turn in request.history:
        if turn.role in ("user", "assistant"):
            msgs.append({"role": turn.role, "content": [{"type": "text", "text": turn.text}]})
    prompt = request.prompt or "Describe what you see and hear."
    msgs.append({"role": "user", "content": [*content, {"type": "text", "text": prompt}]})
    return msgs


def fit(image: RGB, max_pixels: int) -> RGB:
    """Downscale to at most ``max_pixels`` pixels, keeping the aspect ratio."""
    h, w = image.shape[:2]
    if h * w <= max_pixels:
        return np.array(image)  # writable: torch warns on read-only arrays
    scale = (max_pixels / (h * w)) ** 0.5
    size = (max(28, int(w * scale)), max(28, int(h * scale)))
    return np.array(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def subsample(frames: tuple[RGB, ...], limit: int = MAX_VIDEO_FRAMES) -> list[RGB]:
    """At most ``limit`` frames, uniformly spread, as the MiniCPM-V demo does."""
    if len(frames) <= limit:
        return list(frames)
    step = len(frames) / limit
    return [frames[int(i * step + step / 2)] for i in range(limit)]


FAMILIES = {f.name: f for f in [
    Family("qwen2-vl", "Qwen2VLForConditionalGeneration", frozenset({"image", "video"})),
    Family("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", frozenset({"image", "video"})),
    Family("qwen2-audio", "Qwen2AudioForConditionalGeneration", frozenset({"audio"})),
    Family("qwen2.5-omni", "Qwen2_5OmniThinkerForConditionalGeneration",
           frozenset({"image", "video", "audio"})),
    Family("minicpm-v", "AutoModel", frozenset({"image", "video"}), remote_code=True),
    Family("minicpm-o", "AutoModel", frozenset({"image", "video", "audio"}), remote_code=True),
]}
