"""The generic path on transformers: load a checkpoint by its Auto class, and turn a request
into processor inputs with the checkpoint's own chat template."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent import (
    AUDIO_RATE,
    Family,
    ModelRequest,
    Prompter,
    fit,
    long_audio,
    pad_frames,
    sequence_media,
    subsample,
    video_metadata,
)

AUTO_CLASSES = ("AutoModelForMultimodalLM", "AutoModelForImageTextToText",
                "AutoModelForCausalLM")


def auto_load(source: str, config: Any, remote_code: bool, kwargs: dict[str, Any]) -> Any:
    """The first Auto class that maps ``config`` (with remote code: that names it in
    ``auto_map``, then ``AutoModel``), loaded; ``None`` when none does."""
    import transformers

    auto_map = getattr(config, "auto_map", None) or {}
    for name in AUTO_CLASSES:
        cls = getattr(transformers, name)
        if type(config) in cls._model_mapping or (remote_code and name in auto_map):
            return cls.from_pretrained(source, trust_remote_code=remote_code, **kwargs)
    if remote_code and "AutoModel" in auto_map:
        return transformers.AutoModel.from_pretrained(source, trust_remote_code=True, **kwargs)
    return None


def processor_inputs(processor: Any, request: ModelRequest, family: Family,
                     modalities: frozenset[str], max_pixels: int,
                     prompter: Prompter | None = None) -> Any:
    """Processor outputs (tensors) for ``request``: few-shot and question images, the video as
    frames with their real fps, the audio at 16 kHz (split into clips the encoder takes), and
    the prompt ``prompter`` renders (one is made when none is given)."""
    text, kwargs = processor_args(processor, request, family, modalities, max_pixels, prompter)
    return processor(text=[text], return_tensors="pt", **kwargs, **family.processor_kwargs)


def processor_args(processor: Any, request: ModelRequest, family: Family,
                   modalities: frozenset[str], max_pixels: int,
                   prompter: Prompter | None = None) -> tuple[str, dict[str, Any]]:
    """What ``processor_inputs`` gives the processor: the prompt's text, and its media and
    tokenizer arguments (the family's own arguments not included)."""
    prompter = prompter or Prompter(processor, family, modalities)
    request = sequence_media(request, long_audio.encoder_window(processor))
    images = [fit(img, max_pixels) for img, _ in request.examples]
    images += [fit(e.image, max_pixels) for e in request.sequence if e.image is not None]
    images += [fit(img, max_pixels) for img in request.images]
    kwargs: dict[str, Any] = {}
    if request.video and "video" in modalities:
        temporal = getattr(getattr(processor, "video_processor", None), "temporal_patch_size", 1)
        sampled = subsample(request.video)
        fps = request.video_fps * len(sampled) / len(request.video)  # after subsampling
        frames = np.stack(pad_frames([fit(f, max_pixels) for f in sampled], int(temporal or 1)))
        # Qwen2.5-Omni's processor reads fps from the kwargs, the others from the metadata
        kwargs.update(videos=[frames], do_sample_frames=False, fps=fps,
                      video_metadata=[video_metadata(len(frames), fps)])
    clips: list[Any] = []
    if request.audio is not None and "audio" in modalities:
        clips = long_audio.split(request.audio, long_audio.encoder_window(processor))
    heard = [e.audio for e in request.sequence if e.audio is not None]  # the timeline's first
    if heard or clips:
        kwargs.update(audio=heard + clips, sampling_rate=AUDIO_RATE)
    if images and "image" in modalities:
        kwargs["images"] = images
    prompt = prompter.render(request, audio_clips=len(clips) or 1)
    if not prompt.special_tokens:  # the template wrote the BOS: no second one
        kwargs["add_special_tokens"] = False
    return prompt.text, kwargs
