"""Watches: conditions a client asks the session to watch for (``session.streamagent.watches``),
checked on every window, live or not, and told as a response of their own when one fires.

Each watch has one condition: ``condition`` (a sentence an LLM answers yes or no about the
window's frame), ``text_contains`` (the embedded OCR's text in view), ``face`` (``appears`` or
``leaves``, the embedded face detector) or ``speech_contains`` (an utterance heard by the
embedded ASR). A watch fires when its condition has held for ``confirm_windows`` windows in a
row; then it stays quiet for ``cooldown_s`` seconds of media time and until the condition has
been false again (one event, one alert). ``WatchState`` is that state machine; ``Watches``
(``agent.watch_runner``) feeds it.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.answers import response_metadata
from agent.config import ProfileConfig
from agent.errors import InvalidRequest
from agent.ids import new_id
from agent.parts import Part, TextDelta, ToolCallDelta
from agent.runtime import Runtime
from agent.watch_models import HANDLER_OF, model_of, norm, session_llm

MAX_WATCHES = 32
"""Watches one session may hold."""
Kind = Literal["condition", "text_contains", "face", "speech_contains"]
KINDS: tuple[Kind, ...] = ("condition", "text_contains", "face", "speech_contains")
Phrase = Annotated[str, Field(min_length=1, max_length=200)]


class WatchSpec(BaseModel):
    """One entry of ``session.streamagent.watches``, as a client sends it: unknown fields and
    conflicting ones are errors that name them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    condition: str | None = Field(default=None, min_length=1, max_length=500)
    text_contains: Phrase | None = None
    face: Literal["appears", "leaves"] | None = None
    speech_contains: Phrase | None = None
    model: str | None = Field(default=None, min_length=1, max_length=128)
    """The pool model that decides a ``condition`` (default: the session's LLM)."""
    cooldown_s: float = Field(default=10.0, ge=0, le=86_400, allow_inf_nan=False)
    confirm_windows: int | None = Field(default=None, ge=1, le=30)
    """Default: 1 for the embedded models, 2 for an LLM's condition."""
    tool: str | None = Field(default=None, min_length=1, max_length=64)
    """A client function (one of the session's ``tools``) that the firing is a call of."""
    webhook: str | None = Field(default=None, min_length=1, max_length=2048)
    """An http(s) URL each firing is POSTed to as JSON (``agent.webhooks``)."""

    @model_validator(mode="after")
    def _one_condition(self) -> WatchSpec:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"watch {self.id!r} needs exactly one condition of "
                             f"{', '.join(KINDS)}; it has {', '.join(given) or 'none'}")
        for phrase in (self.text_contains, self.speech_contains):
            if phrase is not None and not norm(phrase):
                raise ValueError(f"watch {self.id!r}: its phrase is only white space")
        if self.model is not None and given[0] != "condition":
            raise ValueError(f"watch {self.id!r}: model goes with condition only (a "
                             f"{given[0]} watch uses the model of its embedded handler)")
        return self

    def watch(self) -> Watch:
        kind: Kind = next(k for k in KINDS if getattr(self, k) is not None)
        confirm = self.confirm_windows or (2 if kind == "condition" else 1)
        return Watch(self.id, kind, str(getattr(self, kind)), self.cooldown_s, confirm,
                     self.model, self.tool, self.webhook)


@dataclass(frozen=True, slots=True)
class Watch:
    """A watch as the session keeps it; ``model`` is filled in when the session takes it."""

    id: str
    kind: Kind
    target: str
    """The sentence, the phrase, or ``appears`` / ``leaves``."""
    cooldown_s: float = 10.0
    confirm_windows: int = 1
    model: str | None = None
    tool: str | None = None
    webhook: str | None = None

    @property
    def modality(self) -> str:
        return "audio" if self.kind == "speech_contains" else "image"

    def says(self) -> str:
        """What a firing says: ``watch "exit": text "EXIT" in view``."""
        what = {"condition": self.target,
                "text_contains": f'text "{self.target}" in view',
                "face": "a face appeared" if self.target == "appears" else "the face left",
                "speech_contains": f'heard "{self.target}"'}[self.kind]
        return f'watch "{self.id}": {what}'

    def as_dict(self) -> dict[str, Any]:
        """As ``session.updated`` lists it, defaults and the deciding model filled in."""
        out: dict[str, Any] = {"id": self.id, self.kind: self.target, "model": self.model,
                               "cooldown_s": self.cooldown_s,
                               "confirm_windows": self.confirm_windows}
        return out | {k: v for k, v in (("tool", self.tool), ("webhook", self.webhook)) if v}


def resolve(watches: tuple[Watch, ...], runtime: Runtime,
            profile: ProfileConfig) -> tuple[Watch, ...]:
    """``watches`` with the model each uses in a session of ``profile``; raise
    ``InvalidRequest`` naming a watch that cannot be watched there, or an id given twice."""
    models = {kind: model_of(runtime, handler, profile) for kind, handler in HANDLER_OF.items()}
    llm, pool = session_llm(runtime, profile), runtime.pool.names
    ids = [w.id for w in watches]
    if twice := sorted({i for i in ids if ids.count(i) > 1}):
        raise InvalidRequest(f"watch ids must differ: {twice} given more than once",
                             param="session.streamagent.watches")
    out = []
    for i, watch in enumerate(watches):
        param = f"session.streamagent.watches.{i}"
        if watch.kind == "condition":
            model = watch.model or llm
            if model is None:
                raise InvalidRequest(f"watch {watch.id!r}: no LLM in this session to decide a "
                                     f"condition; name one with model ({', '.join(pool)})",
                                     param=param)
            if model not in pool:
                raise InvalidRequest(f"watch {watch.id!r}: no model named {model!r}; models: "
                                     f"{', '.join(pool)}", param=f"{param}.model")
        else:
            model = models.get(watch.kind)
            if model is None:
                raise InvalidRequest(f"watch {watch.id!r}: {watch.kind} needs the model of the "
                                     f"{HANDLER_OF[watch.kind]} handler, which this server "
                                     "does not have", param=param)
        out.append(replace(watch, model=model))
    return tuple(out)


def check_calls(watches: tuple[Watch, ...], tools: Collection[str], where: str) -> None:
    """Raise ``InvalidRequest`` naming a watch whose ``tool`` is not one of ``tools`` (the
    names of the session's functions, as they are after the change being checked)."""
    for i, watch in enumerate(watches):
        if watch.tool is not None and watch.tool not in tools:
            raise InvalidRequest(
                f"watch {watch.id!r} calls {watch.tool!r}, which is not one of the session's "
                f"tools ({', '.join(tools) or 'none'})",
                param=f"{where}.streamagent.watches.{i}.tool")


@dataclass(slots=True)
class WatchState:
    """One watch's firing rule. ``step`` takes each window's verdict at media time ``now``
    (seconds) and says whether the watch fires. It fires once the condition has held for
    ``confirm`` windows in a row, when it is armed and out of its cooldown; firing disarms it
    (until the condition has been false again) and starts a cooldown of ``cooldown_s``. A
    condition that comes back during the cooldown fires when the cooldown ends, if it still
    holds then."""

    confirm: int = 1
    cooldown_s: float = 10.0
    armed: bool = True
    """``face: leaves`` starts disarmed: a face must be seen before one can leave."""
    run: int = 0
    """Windows in a row the condition has held."""
    quiet_until: float = -math.inf
    fired: int = 0

    def step(self, holds: bool, now: float) -> bool:
        if not holds:
            self.run, self.armed = 0, True
            return False
        self.run += 1
        if not self.armed or self.run < self.confirm or now < self.quiet_until:
            return False
        self.armed, self.quiet_until = False, now + self.cooldown_s
        self.fired += 1
        return True


def state_of(watch: Watch) -> WatchState:
    return WatchState(watch.confirm_windows, watch.cooldown_s,
                      armed=not (watch.kind == "face" and watch.target == "leaves"))


@dataclass(frozen=True, slots=True)
class Firing:
    """A watch fired about ``[start, end)`` seconds of media time (the window, or for speech
    the utterance)."""

    watch: Watch
    start: float
    end: float
    superseded: int = 0
    """Windows the session's watches let go so far because a newer one came while busy."""

    @property
    def about(self) -> str:
        return f'watch "{self.watch.id}" at {round(self.start * 1000)} ms'

    def metadata(self) -> dict[str, str]:
        """``response.metadata``: as a live response's, with the watch's id."""
        meta = response_metadata("watch", self.watch.modality, self)
        return {**meta, "streamagent_watch": self.watch.id,
                "windows_superseded": str(self.superseded)}

    def arguments(self) -> dict[str, Any]:
        """A firing as a call's arguments: the watch, the media time, what fired."""
        return {"watch": self.watch.id, "window_start_ms": round(self.start * 1000),
                "window_end_ms": round(self.end * 1000), "what": self.watch.says()}

    async def parts(self) -> AsyncIterator[Part]:
        """The response's answer: what fired, as text, or as a call of the watch's tool."""
        if self.watch.tool is None:
            yield TextDelta(self.watch.says())
        else:
            yield ToolCallDelta(0, new_id("call"), self.watch.tool,
                                json.dumps(self.arguments()))
