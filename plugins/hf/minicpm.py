"""MiniCPM-V 2.6 / MiniCPM-o 2.6: remote code with its own ``chat(msgs=..., stream=True)`` API."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from agent.families import ChatCall, fit, subsample


def chat(call: ChatCall) -> Iterator[str]:
    """MiniCPM-V / MiniCPM-o: their own ``chat(msgs=..., stream=True)`` API."""
    from PIL import Image

    request, options = call.request, call.options

    def pil(img: Any) -> Image.Image:
        return Image.fromarray(fit(img, call.max_pixels))

    msgs: list[dict[str, Any]] = []
    for img, answer in request.examples:
        msgs += [{"role": "user", "content": [pil(img)]},
                 {"role": "assistant", "content": [answer]}]
    msgs += [{"role": t.role, "content": [t.text]} for t in request.history
             if t.role in ("user", "assistant")]
    content: list[Any] = [pil(img) for img in request.images]
    extra: dict[str, Any] = {}
    if request.video:
        frames = subsample(request.video)
        content += [pil(f) for f in frames]
        extra = {"use_image_id": False, "max_slice_nums": 1 if len(frames) > 16 else 2}
    if request.audio is not None and "audio" in call.modalities:
        content.append(request.audio)
    content.append(request.prompt or "Describe what you see and hear.")
    msgs.append({"role": "user", "content": content})
    sampling = bool(options.pop("do_sample", False))
    stop = options.pop("stopping_criteria")
    # MiniCPM's chat() keeps only the generation options it knows, so a stopping criterion
    # never reaches generate(): hand it to the language model's generate() directly.
    llm = getattr(call.model, "llm", None)
    if llm is not None:
        llm.generate = functools.partial(llm.generate, stopping_criteria=stop)
    try:
        yield from call.model.chat(image=None, msgs=msgs, tokenizer=call.tokenizer,
                                   sampling=sampling, stream=True,
                                   system_prompt=request.instructions or "",
                                   **extra, **options)
    finally:
        if llm is not None:
            del llm.generate  # back to the class's method
