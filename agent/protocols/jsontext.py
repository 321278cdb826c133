"""JSON text of server events, with a client's strings echoed as they came.

An item's echo (``conversation.item.added`` and ``.done``) carries the client's data URLs back:
``json.dumps`` scans a 90 KB picture for characters to escape (about 0.2 ms, twice a frame,
most of what ingest cost over the floor). A string from a message with nothing to escape
(``plain``) is marked ``Verbatim``, and ``dumps`` copies it between quotes without scanning it.
The text is the same as ``json.dumps``'s.
"""

from __future__ import annotations

import json
from typing import Any

_HOLE = "\x00streamagent.verbatim"
_HOLE_JSON = json.dumps(_HOLE)


class Verbatim:
    """A client's string to send back as it came, with nothing in it to escape in JSON (it
    came from a ``plain`` message): ``dumps`` copies it between quotes. Not a ``str``, so that
    marking one copies nothing and ``json.dumps`` finds it for ``dumps`` (and refuses it
    elsewhere)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Verbatim({self.text[:40]!r}...)"


def plain(message: str) -> bool:
    """Whether every string in this JSON text decodes to itself with nothing to escape: the
    text is ASCII without a backslash or DEL (the parser refuses other control characters in
    strings). A few microseconds for a 90 KB message."""
    return message.isascii() and "\\" not in message and "\x7f" not in message


def echoed(value: str, from_plain: bool) -> str | Verbatim:
    """A string of a client's message, to be sent back: ``Verbatim`` if the message was
    ``plain``."""
    return Verbatim(value) if from_plain else value


def dumps(value: Any) -> str:
    """``json.dumps(value)``, with each ``Verbatim`` string copied in rather than scanned."""
    found: list[str] = []

    def hole(obj: object) -> str:
        if type(obj) is not Verbatim:
            raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
        found.append(obj.text)
        return _HOLE

    text = json.dumps(value, default=hole)
    if not found:
        return text
    pieces = text.split(_HOLE_JSON)
    if len(pieces) != len(found) + 1:  # another string in the event was the hole itself
        return json.dumps(value, default=_text)
    out = [pieces[0]]
    for string, piece in zip(found, pieces[1:], strict=True):
        out += ('"', string, '"', piece)
    return "".join(out)


def _text(obj: object) -> str:
    if type(obj) is not Verbatim:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
    return obj.text
