"""The images of a folder for ``streamagent caption``: listed as they are met, read one by one.

The listing streams (``os.scandir``): it never holds the folder's file list, so its memory is
the directories still to visit, whatever the number of images. Its order is deterministic for
an unchanged folder on one file system, but it is not sorted: directories are visited depth
first with subdirectories by name, and the files of one directory come in the file system's
own order (what ``ls -U`` shows; on ext4, hash order). Sorting a directory's files would mean
holding them all, which is what a folder of a million images must not need.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def walk(folder: Path, on_error: Callable[[str, str], None] | None = None) -> Iterator[str]:
    """The images under ``folder`` as relative, ``/``-separated paths (``sub/cat.png``), as
    the listing meets them. Hidden files and directories (``.name``) are left out, and
    symlinked directories are not followed (no cycles). A directory that cannot be listed is
    reported to ``on_error(relative path, message)`` and skipped."""
    pending = [""]
    while pending:
        rel = pending.pop()
        subdirs: list[str] = []
        try:
            with os.scandir(folder / rel if rel else folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    elif os.path.splitext(entry.name)[1].lower() in EXTENSIONS \
                            and entry.is_file():
                        yield rel + entry.name
        except OSError as exc:
            if on_error is None:
                raise
            on_error(rel or ".", f"cannot list this directory: {exc.strerror or exc}")
        pending.extend(f"{rel}{name}/" for name in sorted(subdirs, reverse=True))


def read(path: Path) -> np.ndarray:
    """The picture at ``path`` as RGB pixels (the first frame of an animation)."""
    with Image.open(path) as img:
        img.load()
        return np.array(img.convert("RGB"))


def sidecar(folder: Path, key: str, ext: str) -> Path:
    """The text file a trainer reads beside image ``key`` (``cat.png`` -> ``cat.txt``)."""
    return (folder / key).with_suffix(ext)
