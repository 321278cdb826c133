"""Where captions go: one ``Sink`` per output format, used alike by the local run
(agent/caption.py) and the Ray Data run (agent/caption_ray.py).

A sink knows what is already done (read back from disk when it opens, so a run killed with
``kill -9`` resumes), appends each caption as it comes (never rewrites what it wrote), and
records per-image errors in an errors log (JSON Lines beside the output; ``json`` keeps them
inside its file). What it holds in memory is what resuming needs: the relative paths of the
images already captioned (``txt`` holds none: the sidecars on disk say it), plus, with
``track``, the ones this run wrote, to refuse a second caption of one image.
"""

from __future__ import annotations

import abc
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from agent.caption_files import sidecar
from agent.caption_journal import CaptionError, Journal, write_atomically

FORMATS = ("txt", "jsonl", "json", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True, slots=True)
class Caption:
    """One image's caption, as JSON Lines and Parquet store it (``file_name`` and ``text``
    are the columns Hugging Face's ``imagefolder`` metadata reads)."""

    file_name: str
    text: str
    model: str = ""
    prompt: str = ""
    task: str = ""
    """The checkpoint's own task it was asked (``caption``), or ``""`` for ``prompt``."""
    seconds: float = 0.0
    """How long the model took for it."""
    time: str = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class Failure:
    """An image that got no caption, and why (it is tried again by the next run)."""

    file_name: str
    error: str
    time: str = field(default_factory=now)


class Sink(abc.ABC):
    format: ClassVar[str] = ""

    def __init__(self, errors: Path, overwrite: bool = False, track: bool = False) -> None:
        self.errors = Journal(errors)
        self.overwrite = overwrite
        self.track = track
        self.keys: set[str] = set()
        """Images captioned already (and, with ``track``, by this run)."""
        self.duplicates = 0

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """Where the captions are, in words."""

    @property
    def errors_where(self) -> str:
        """Where the errors log is, in words."""
        return str(self.errors.path)

    def open(self) -> None:
        """Read what is done; with ``overwrite``, start from nothing."""
        if self.overwrite:
            self.errors.remove()

    def done(self, key: str) -> bool:
        return key in self.keys

    def write(self, caption: Caption) -> bool:
        """Store ``caption``; ``False`` (and nothing stored) if its image has one already."""
        if self.track:
            if caption.file_name in self.keys:
                self.duplicates += 1
                return False
            self.keys.add(caption.file_name)
        self._write(caption)
        return True

    @abc.abstractmethod
    def _write(self, caption: Caption) -> None: ...

    def fail(self, failure: Failure) -> None:
        self.errors.append(asdict(failure))

    def close(self) -> None:
        self.errors.close()

    def __enter__(self) -> Sink:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class TxtSink(Sink):
    """A text file beside each image (``cat.png`` -> ``cat.txt``), as kohya-ss/sd-scripts and
    most LoRA trainers read them; written whole or not at all. Done: the sidecar exists."""

    format = "txt"

    def __init__(self, folder: Path, ext: str = ".txt", **kw: Any) -> None:
        super().__init__(**kw)
        self.folder = folder
        self.ext = ext if ext.startswith(".") else f".{ext}"

    @property
    def where(self) -> str:
        return f"beside the images in {self.folder} (*{self.ext})"

    def done(self, key: str) -> bool:
        return not self.overwrite and sidecar(self.folder, key, self.ext).exists()

    def write(self, caption: Caption) -> bool:
        self._write(caption)  # the same text to the same file: a second write changes nothing
        return True

    def _write(self, caption: Caption) -> None:
        write_atomically(sidecar(self.folder, caption.file_name, self.ext),
                         caption.text.encode())


class JsonlSink(Sink):
    """One JSON line per image, appended: ``file_name``, ``text``, ``model``, ``prompt``,
    ``task``, ``seconds``, ``time``. Named ``metadata.jsonl`` inside the image folder, it is
    what Hugging Face's ``imagefolder`` loader reads."""

    format = "jsonl"

    def __init__(self, out: Path, **kw: Any) -> None:
        super().__init__(**kw)
        self.journal = Journal(out)

    @property
    def where(self) -> str:
        return str(self.journal.path)

    def open(self) -> None:
        super().open()
        if self.overwrite:
            self.journal.remove()
        self.keys.update(r["file_name"] for r in self.journal.records())

    def _write(self, caption: Caption) -> None:
        self.journal.append(asdict(caption))

    def close(self) -> None:
        self.journal.close()
        super().close()


class JsonSink(Sink):
    """``{"captions": {file: text}, "errors": {file: message}}``, for small folders: the file
    is written whole, once, when the run ends. Until then each caption is appended to a
    journal beside it (``captions.json.journal``), so a killed run loses nothing; the next
    run (or this one's end) folds the journal into the file. Writing it holds every caption in
    memory, and each run rewrites it whole: past some thousands of images, use ``jsonl``."""

    format = "json"

    def __init__(self, out: Path, **kw: Any) -> None:
        super().__init__(**kw)
        self.out = out
        self.journal = Journal(out.with_name(out.name + ".journal"))

    @property
    def where(self) -> str:
        return str(self.out)

    @property
    def errors_where(self) -> str:
        return f'{self.out} (its "errors")'

    def open(self) -> None:
        if self.overwrite:
            self.out.unlink(missing_ok=True)
            self.journal.remove()
        self.keys.update(self._load()[0])
        self.journal_errors = 0

    def _write(self, caption: Caption) -> None:
        self.journal.append({"file_name": caption.file_name, "text": caption.text})

    def fail(self, failure: Failure) -> None:
        self.journal.append({"file_name": failure.file_name, "error": failure.error})
        self.journal_errors += 1

    def close(self) -> None:
        captions, errors = self._load()
        body = {"captions": dict(sorted(captions.items())),
                "errors": {k: v for k, v in sorted(errors.items()) if k not in captions}}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.out, json.dumps(body, indent=1, ensure_ascii=False).encode())
        self.journal.remove()  # folded in (a kill before this line folds it in again: same)

    def _load(self) -> tuple[dict[str, str], dict[str, str]]:
        captions: dict[str, str] = {}
        errors: dict[str, str] = {}
        if self.out.exists():
            try:
                data = json.loads(self.out.read_text())
                captions.update(data.get("captions", {}))
                errors.update(data.get("errors", {}))
            except (ValueError, AttributeError) as exc:
                raise CaptionError(f"{self.out} is not a captions file of ours ({exc}); "
                                   "move it away or use --overwrite") from None
        for record in self.journal.records():
            if "text" in record:
                captions[record["file_name"]] = record["text"]
            else:
                errors[record["file_name"]] = str(record.get("error", ""))
        return captions, errors


def infer_format(fmt: str | None, out: Path | None) -> str:
    """The format asked for, else the one ``out``'s suffix names, else ``txt`` (no output
    file: sidecars)."""
    if fmt:
        if fmt not in FORMATS:
            raise CaptionError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
        return fmt
    if out is None:
        return "txt"
    if out.suffix.lower() in SUFFIXES:
        return SUFFIXES[out.suffix.lower()]
    raise CaptionError(f"cannot tell the format from {out.name!r}: name it .jsonl, .json or "
                       ".parquet, or pass --format")


def open_sink(fmt: str, folder: Path, out: Path | None, *, ext: str = ".txt",
              overwrite: bool = False, errors: Path | None = None,
              track: bool = False) -> Sink:
    """The sink for ``fmt`` (not opened yet). Errors go to ``errors``, by default beside the
    output (``captions.jsonl`` -> ``captions.errors.jsonl``; ``txt``: in the folder)."""
    if fmt != "txt" and out is None:
        raise CaptionError(f"--format {fmt} writes one output: name it with -o")
    if fmt == "txt" and out is not None:
        raise CaptionError("--format txt writes a sidecar beside each image: drop -o "
                           "(--errors names the errors log)")
    if errors is None:
        errors = (folder / "captions.errors.jsonl" if out is None
                  else out.with_name(f"{out.stem}.errors.jsonl"))
    kw: dict[str, Any] = {"errors": errors, "overwrite": overwrite, "track": track}
    if fmt == "txt":
        return TxtSink(folder, ext, **kw)
    assert out is not None
    if fmt == "jsonl":
        return JsonlSink(out, **kw)
    if fmt == "json":
        return JsonSink(out, **kw)
    if fmt == "parquet":
        from agent.caption_parquet import ParquetSink

        return ParquetSink(out, **kw)
    raise CaptionError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
