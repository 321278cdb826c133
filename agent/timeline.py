"""A session's timeline: what one model has seen, heard and said in a session, in order.

One per session and model. Frames (with their media time as text, ``[01:05]``), sounds, and
each exchange (what the model was asked, live or by a question, and what it answered) are
appended in order and never changed, so the prompt a call renders from it extends the prompt
of the call before, token for token: the engine's prefix cache serves all but the newest part
(``docs/architecture.md``, "The timeline"). What changes per call (the question) comes last.

Bounded: past its budget (frames, or approximate prompt tokens), the oldest part goes in one
cut, down to ``retention_ratio`` of the budget, and the timeline says from when it remembers.
A cut changes the prompt's beginning, so the next call computes it all again; cutting down to
a fraction, not by one frame, makes that rare.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from agent.config import MemoryConfig
from agent.engine import Entry
from agent.media import RGB, Audio, Frame
from agent.parts import Part, TextDelta, Usage

CHARS_PER_TOKEN = 4
"""Text tokens are estimated at this many characters each (plus a few per message)."""
FRAME_TOKENS = 256
"""A frame's tokens until the engine has counted some."""


def stamp(seconds: float) -> str:
    """Media time as the model reads it: ``[01:05]``, ``[1:02:05]`` past an hour."""
    s = max(0, int(seconds))
    h, m = divmod(s // 60, 60)
    return f"[{h}:{m:02d}:{s % 60:02d}]" if h else f"[{m:02d}:{s % 60:02d}]"


def frame_key(frame: Frame) -> str:
    """A content hash of a frame: of its encoded bytes when it came encoded (cheap), else of
    its pixels."""
    data = frame.b64.encode() if frame.b64 else _pixels(frame.image())
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def content_key(array: np.ndarray) -> str:
    """A content hash of a picture or a sound."""
    return hashlib.blake2b(_pixels(array), digest_size=16).hexdigest()


def _pixels(array: np.ndarray) -> bytes:
    return repr(array.shape).encode() + np.ascontiguousarray(array).tobytes()


@dataclass(frozen=True, slots=True)
class _Item:
    """What was appended at once: a frame or sound (its time and itself), or an exchange."""

    ts: float
    entries: tuple[Entry, ...]
    media: int = 0
    """Frames and sounds in it (0 for an exchange)."""

    @property
    def chars(self) -> int:
        return sum(len(e.text) for e in self.entries)


@dataclass(frozen=True, slots=True)
class Render:
    """What one call sends: the timeline's entries, then this call's prompt."""

    entries: tuple[Entry, ...]
    media: int
    chars: int


class Timeline:
    """One model's timeline in one session (see the module's docstring)."""

    def __init__(self, budget: MemoryConfig) -> None:
        self.budget = budget
        self.items: list[_Item] = []
        self.cuts = 0
        """How many times the oldest part was dropped."""
        self.forgotten_before: float | None = None
        """Media time before which everything was cut (``None``: nothing was)."""
        self.frame_tokens = float(FRAME_TOKENS)
        """Tokens a frame or sound takes, learned from the engine's counts."""
        self._newest: dict[str, float] = {}

    @property
    def media(self) -> int:
        """Frames and sounds held."""
        return sum(item.media for item in self.items)

    @property
    def tokens(self) -> int:
        """The prompt tokens the timeline renders to, approximately."""
        return round(self._tokens(self.items))

    def _tokens(self, items: list[_Item]) -> float:
        return sum(item.media * self.frame_tokens + _text_tokens(item.chars, len(item.entries))
                   for item in items)

    def newest(self, kind: str) -> float:
        """The media time of the newest ``image`` or ``audio`` added (-1: none yet)."""
        return self._newest.get(kind, -1.0)

    def see(self, ts: float, image: RGB, key: str) -> bool:
        """Add a frame at media time ``ts``. One not newer than the newest frame added is
        there already (another handler added it, or a question did): ``False``."""
        return self._add_media("image", ts, Entry("user", image=image, key=key))

    def hear(self, ts: float, audio: Audio, key: str) -> bool:
        """Add a sound that starts at media time ``ts`` (as ``see``, among sounds)."""
        return self._add_media("audio", ts, Entry("user", audio=audio, key=key))

    def _add_media(self, kind: str, ts: float, entry: Entry) -> bool:
        if ts <= self.newest(kind):
            return False
        self._newest[kind] = ts
        self._append(_Item(ts, (Entry("user", stamp(ts)), entry), media=1))
        return True

    def render(self, prompt: str) -> Render:
        """The entries a call sends: what is held, then ``prompt`` (if any) as the user's."""
        entries: list[Entry] = []
        if self.forgotten_before is not None:
            entries.append(Entry("user", f"(What came before {stamp(self.forgotten_before)} "
                                         "is forgotten.)"))
        entries += [e for item in self.items for e in item.entries]
        if prompt:
            entries.append(Entry("user", prompt))
        return Render(tuple(entries), self.media,
                      sum(item.chars for item in self.items) + len(prompt))

    def said(self, prompt: str, answer: str) -> None:
        """Record an exchange: ``prompt`` (if any) and the answer."""
        asked = (Entry("user", prompt),) if prompt else ()
        ts = self.items[-1].ts if self.items else 0.0
        self._append(_Item(ts, (*asked, Entry("assistant", answer))))

    def counted(self, render: Render, prompt_tokens: int) -> None:
        """The engine counted ``prompt_tokens`` for ``render``: learn what a frame takes."""
        if render.media:
            text = _text_tokens(render.chars, len(render.entries))
            self.frame_tokens = max(1.0, (prompt_tokens - text) / render.media)

    def _append(self, item: _Item) -> None:
        self.items.append(item)
        if self.media > self.budget.max_frames or self.tokens > self.budget.max_tokens:
            self._cut()

    def _cut(self) -> None:
        """Drop the oldest items down to ``retention_ratio`` of both bounds, in one cut; what
        is kept starts at a frame or sound (an exchange without what it was about goes too)."""
        ratio = self.budget.retention_ratio
        frames, tokens = ratio * self.budget.max_frames, ratio * self.budget.max_tokens
        keep, kept_frames, kept_tokens = len(self.items), 0, 0.0
        while keep > 0:  # walk back from the newest while the bounds allow
            item = self.items[keep - 1]
            kept_frames += item.media
            kept_tokens += self._tokens([item])
            if kept_frames > frames or kept_tokens > tokens:
                break
            keep -= 1
        keep = min(keep, len(self.items) - 1)  # the newest item stays, whatever its size
        while keep < len(self.items) - 1 and not self.items[keep].media:
            keep += 1
        self.forgotten_before = self.items[keep].ts
        del self.items[:keep]
        self.cuts += 1

    async def exchange(self, render: Render, prompt: str,
                       parts: AsyncIterator[Part]) -> AsyncIterator[Part]:
        """Pass on the parts of the call that sent ``render``; learn from its ``Usage``; when
        it ends with an answer, record the exchange. A call that fails, is cancelled or says
        nothing leaves only what it was shown."""
        text: list[str] = []
        async for part in parts:
            if isinstance(part, TextDelta):
                text.append(part.text)
            elif isinstance(part, Usage) and part.prompt_tokens is not None:
                self.counted(render, part.prompt_tokens)
            yield part
        answer = "".join(text).strip()
        if answer:
            self.said(prompt, answer)


def _text_tokens(chars: int, entries: int) -> float:
    return chars / CHARS_PER_TOKEN + 4 * entries


@dataclass(frozen=True, slots=True)
class Window:
    """A client's own bound on its session's timelines (OpenAI's ``truncation``, Gemini's
    ``contextWindowCompression``), within each model's configured budget: cut past
    ``max_tokens``, down to ``keep_tokens`` (or ``retention_ratio`` of ``max_tokens``).
    ``None`` fields: the model's own."""

    max_tokens: int | None = None
    keep_tokens: int | None = None
    retention_ratio: float | None = None

    def within(self, budget: MemoryConfig) -> MemoryConfig:
        """``budget`` narrowed to this window (never widened: the operator's bound holds)."""
        top = max(64, min(self.max_tokens or budget.max_tokens, budget.max_tokens))
        ratio = (self.retention_ratio if self.retention_ratio is not None
                 else self.keep_tokens / top if self.keep_tokens is not None
                 else budget.retention_ratio)
        return budget.model_copy(update={"max_tokens": top,
                                         "retention_ratio": min(max(ratio, 0.01), 0.99)})


@dataclass
class Memory:
    """A session's timelines, one per model, while ``on``; turning it off forgets them."""

    on: bool = False
    budgets: Mapping[str, MemoryConfig] = field(default_factory=dict)
    """Each model's budget (``models.NAME.memory``); a model not listed has the default."""
    timelines: dict[str, Timeline] = field(default_factory=dict)
    window: Window = Window()
    """The client's bound within the budgets (the default: none of its own)."""

    def set(self, on: bool) -> None:
        self.on = on
        if not on:
            self.timelines.clear()

    def budget(self, model: str) -> MemoryConfig:
        return self.window.within(self.budgets.get(model, MemoryConfig()))

    def narrow(self, window: Window) -> None:
        """Bound the timelines by ``window`` from now on (those held: at their next entry)."""
        self.window = window
        for model, timeline in self.timelines.items():
            timeline.budget = self.budget(model)

    def timeline(self, model: str | None) -> Timeline | None:
        """``model``'s timeline in this session (``None``: memory is off, or no model)."""
        if not self.on or model is None:
            return None
        if model not in self.timelines:
            self.timelines[model] = Timeline(self.budget(model))
        return self.timelines[model]
