"""Prompt-style checkpoints: no chat template, one picture, prompted by task.

A handler's own ask comes as ``request.task`` (``caption``, ``ocr``, or the checkpoint's own task
prompt); a question comes as ``request.prompt``. Each function below writes the text the
checkpoint was trained on; its processor (or vLLM's) places the image tokens.
"""

from __future__ import annotations

import json
from typing import Any

from agent import ModelRequest

CAPTION, OCR = "caption", "ocr"
DEFAULT_QUESTION = "What is in the picture?"


def blip2(request: ModelRequest) -> str:
    """BLIP-2: no text for a caption (it writes one after the BOS); a question as
    ``Question: … Answer:``, after the earlier turns written the same way (the model card's
    chat). The answer ends at the newline (the family's stop)."""
    if request.task == CAPTION:
        return ""
    turns, asked = [], ""
    for turn in request.history:
        if turn.role == "user":
            asked = turn.text
        elif turn.role == "assistant" and asked:
            turns.append(f"Question: {asked} Answer: {turn.text}")
            asked = ""
    turns.append(f"Question: {request.prompt or DEFAULT_QUESTION} Answer:")
    return " ".join(turns)


FLORENCE_TASKS = {CAPTION: "<MORE_DETAILED_CAPTION>", OCR: "<OCR>"}


def florence2(request: ModelRequest) -> str:
    """Florence-2: a task prompt (``<MORE_DETAILED_CAPTION>`` for a caption, ``<OCR>`` to read
    text, or any of its own such as ``<CAPTION>`` or ``<OD>`` named as the task); its processor
    turns it into the words it was trained on. A question goes as it is (Florence-2 was trained
    on its tasks only)."""
    if request.task:
        return FLORENCE_TASKS.get(request.task, request.task)
    return request.prompt or FLORENCE_TASKS[CAPTION]


def florence2_answer(processor: Any, raw: str, request: ModelRequest) -> str:
    """The processor's post-processing of the whole output: the text of a text task, JSON of
    the boxes, polygons and labels of a region task (in the picture's own pixels)."""
    task = florence2(request)
    height, width = request.images[-1].shape[:2] if request.images else (0, 0)
    parsed = processor.post_process_generation(raw, task=task, image_size=(width, height))
    answer = parsed.get(task, "")
    return answer if isinstance(answer, str) else json.dumps(answer)


PALIGEMMA_TASKS = {CAPTION: "caption en", OCR: "ocr"}


def paligemma(request: ModelRequest) -> str:
    """PaliGemma: its prefixes (``caption en``, ``ocr``, ``answer en {question}``, or one named
    as the task, such as ``describe es`` or ``detect cat``), with no ``<image>``: its processor
    adds the image tokens, the BOS and the newline (transformers' logs a warning that it does;
    vLLM's would keep a written ``<image>`` as one more image token)."""
    if request.task:
        return PALIGEMMA_TASKS.get(request.task, request.task)
    return f"answer en {request.prompt or DEFAULT_QUESTION}"
