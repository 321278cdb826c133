"""What watches ask the models: which model decides each kind of condition in a session, and the
model calls themselves (text in view, faces, what was said, a yes/no question), all through the
pool as the handlers make them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent import metrics
from agent.config import ProfileConfig
from agent.direct import DirectHandler
from agent.engine import ModelRequest
from agent.handler import SessionOptions
from agent.media import RGB, Audio
from agent.parts import TextDelta
from agent.pool import Pool
from agent.runtime import Runtime

HANDLER_OF = {"text_contains": "text_in_view", "face": "faces", "speech_contains": "speech"}
"""The handler whose model an embedded condition uses (the same model, asked the same way)."""
LLM_HANDLER = "describe"
"""A condition's model when the watch names none: the model of this handler, if configured."""
YES_NO: Mapping[str, Any] = {"enum": ["yes", "no"]}
"""The output schema of a condition's question: an engine that constrains says one of them."""
INSTRUCTIONS = "You watch a live camera. Answer with one word: yes or no."
QUESTION = "Is this true of the picture? {condition}"
ANSWER_TOKENS = 5
"""Room for ``"yes"`` as JSON, quotes and all, even one character a token (a constraining
engine lets a random-weight model spell it so), or a bare yes."""


def norm(text: str) -> str:
    """Lower case, runs of white space as one space: what a substring condition compares."""
    return " ".join(text.lower().split())


def model_of(runtime: Runtime, handler: str, profile: ProfileConfig) -> str | None:
    """The model ``handler`` uses in ``profile``, when the handler is registered and its model
    is in the pool."""
    if handler not in runtime.registry.handlers and handler not in profile.models:
        return None
    model = profile.models.get(handler) or runtime.handler_model(handler)
    return model if model in runtime.pool.names else None


def session_llm(runtime: Runtime, profile: ProfileConfig) -> str | None:
    """The session's LLM: the ``describe`` handler's model, else the model a session opened on
    a model name talks to."""
    return (model_of(runtime, LLM_HANDLER, profile)
            or model_of(runtime, DirectHandler.name, profile))


@dataclass(frozen=True, slots=True)
class Looker:
    """One session's model calls for its watches, under the session's response options (a live
    call: it waits for room in a full model queue)."""

    pool: Pool
    session_id: str
    options: SessionOptions

    async def _text(self, model: str, request: ModelRequest) -> str:
        # the session's response options, but not its functions: a watch asks its own question
        options = replace(self.options.response, tools=())
        request = options.apply(replace(request, session=self.session_id, live=True))
        said = []
        async for part in metrics.timed(model, self.pool.stream(model, request)):
            if isinstance(part, TextDelta):
                said.append(part.text)
        return "".join(said)

    async def text_in_view(self, model: str, image: RGB) -> str:
        """The text the model reads in ``image``, normalized (``norm``)."""
        return norm(await self._text(model, ModelRequest(images=(image,))))

    async def faces(self, model: str, image: RGB) -> int:
        """How many faces the model finds (it answers a JSON list of boxes per image)."""
        boxes = json.loads(await self._text(model, ModelRequest(images=(image,))) or "[]")
        if not isinstance(boxes, list):
            raise ValueError(f"model {model!r} answered {boxes!r}, not a list of face boxes")
        return len(boxes)

    async def heard(self, model: str, audio: Audio) -> str:
        """What the model hears said in ``audio``, normalized (``norm``)."""
        return norm(await self._text(model, ModelRequest(audio=audio)))

    async def holds(self, model: str, condition: str, image: RGB) -> bool | None:
        """The model's yes or no to ``condition`` about ``image`` (``None``: neither)."""
        answer = await self._text(model, ModelRequest(
            prompt=QUESTION.format(condition=condition), instructions=INSTRUCTIONS,
            images=(image,), output_schema=YES_NO,
            options={"max_new_tokens": ANSWER_TOKENS, "do_sample": False}))
        word = answer.strip().strip("\"'").lower()
        if word.startswith("yes"):
            return True
        return False if word.startswith("no") else None
