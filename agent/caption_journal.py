"""Append-only JSON Lines files that survive ``kill -9``: the building block of every caption
output format (agent/caption_sinks.py).

A record is one line, written and flushed at once, so a killed process leaves at most its last
line torn (no newline, or not JSON). Reading the file back repairs that: the torn tail is cut
off, and the image it named is simply captioned again. Any other bad line is not ours to guess
about: reading stops with an error that names the file and the line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class CaptionError(Exception):
    """A caption run cannot go on: an output that is not ours, a model that keeps failing."""


class Journal:
    """One JSON Lines file, appended to one record at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def records(self) -> Iterator[dict[str, Any]]:
        """The records on disk, in order; a torn last line is cut off the file first."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            good, lineno = 0, 0
            for lineno, line in enumerate(f, 1):
                record = _parse(line)
                if record is None:
                    if f.read(1):  # not the last line: not a tear this code could make
                        raise CaptionError(f"{self.path}:{lineno}: not a caption record: "
                                           f"{line[:80]!r}")
                    f.truncate(good)  # the torn tail of a killed run: that image is redone
                    return
                good += len(line)
                yield record

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # kept open: closed by close()
        self._file.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self._file.flush()  # in the OS's hands: a killed process loses nothing written

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
        return None
    return record


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or what it held before, never a part: a temporary file beside
    it, renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
