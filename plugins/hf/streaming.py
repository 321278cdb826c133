"""The transformers engine's text out: a streamer that counts the tokens it passes on, the
cut at a family's stop text, and a call's ``Usage``."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from agent import Usage


def counting_streamer(engine: Any, tokenizer: Any, timeout_s: float,
                      skip_special: bool = True) -> Any:
    """A TextIteratorStreamer that also counts the tokens generated (after the prompt)."""
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                engine.tokens_generated += int(value.numel())
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=skip_special,
                            timeout=timeout_s)


def cut(pieces: Iterator[str], stops: tuple[str, ...]) -> Generator[str, None, bool]:
    """The text up to the first of ``stops``, which is not shown (text that could begin one
    waits for the next piece); returns whether one was found."""
    held, keep = "", max((len(s) for s in stops), default=1) - 1
    for piece in pieces:
        held += piece
        at = min((i for s in stops if (i := held.find(s)) >= 0), default=-1)
        if at >= 0:
            if at:
                yield held[:at]
            return True
        if len(held) > keep:
            yield held[:len(held) - keep]
            held = held[len(held) - keep:]
    if held:
        yield held
    return False


def usage(prompt: int | None, generated: int, limit: int, ended: str | None,
          cached: int | None = None) -> Usage:
    """``ended``: ``stop`` (a stop string), ``abort`` (cancelled), or ``None`` (the limit or
    the model's end, told apart by the count); ``cached``: prompt tokens from the session's
    cache (``None``: no cache for this call)."""
    return Usage(prompt_tokens=prompt, completion_tokens=generated, cached_tokens=cached,
                 finish_reason=ended or ("length" if generated >= limit else "stop"))
