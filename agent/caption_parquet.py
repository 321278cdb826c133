"""The ``parquet`` caption format: a directory of part files, appended, never rewritten.

``-o captions.parquet`` is a directory holding ``part-00000.parquet``, ``part-00001.parquet``,
… (columns ``file_name``, ``text``, ``model``, ``prompt``, ``task``, ``seconds``, ``time``).
A part is written whole once it holds ``ROWS_PER_PART`` captions (a temporary file renamed in)
and never touched again. Until then its captions are appended to ``_journal-NNNNN.jsonl`` as
they come, so a killed run loses none: the next run turns a journal into its part, or deletes
it when its part was already renamed in (the kill fell between the rename and the deletion).
So every caption is in exactly one part. pyarrow (``pq.read_table(dir)``), pandas, Ray Data
and Hugging Face ``datasets`` read the directory as one table; they skip ``_``-prefixed files.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.caption_journal import CaptionError, Journal
from agent.caption_sinks import Caption, Sink

ROWS_PER_PART = 5000
"""Captions per part file: what a part holds in memory until it is written (~1-2 MB)."""
PART = re.compile(r"part-(\d{5,})\.parquet")
JOURNAL = re.compile(r"_journal-(\d{5,})\.jsonl")


def _arrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CaptionError("--format parquet needs pyarrow: pip install pyarrow (or "
                           "'streamagent[ray]')") from None
    schema = pa.schema([("file_name", pa.string()), ("text", pa.string()),
                        ("model", pa.string()), ("prompt", pa.string()), ("task", pa.string()),
                        ("seconds", pa.float64()), ("time", pa.string())])
    return pa, pq, schema


class ParquetSink(Sink):
    format = "parquet"

    def __init__(self, out: Path, rows_per_part: int = ROWS_PER_PART, **kw: Any) -> None:
        super().__init__(**kw)
        self.pa, self.pq, self.schema = _arrow()
        self.dir = out
        self.rows_per_part = rows_per_part
        self.rows: list[dict[str, Any]] = []
        self.seq = 0
        self.journal = Journal(out / "_journal-00000.jsonl")

    @property
    def where(self) -> str:
        return f"{self.dir}/ (part-*.parquet)"

    def open(self) -> None:
        super().open()
        if self.dir.exists() and not self.dir.is_dir():
            raise CaptionError(f"{self.dir} is a file: the parquet output is a directory of "
                               "part files; name another -o")
        self.dir.mkdir(parents=True, exist_ok=True)
        found = [(m, p) for p in self.dir.iterdir()
                 if (m := PART.fullmatch(p.name) or JOURNAL.fullmatch(p.name))]
        for tmp in self.dir.glob(".part-*.tmp"):  # a killed run's half-written part
            tmp.unlink()
        if self.overwrite:
            for _, path in found:
                path.unlink()
            found = []
        parts = {int(m[1]) for m, p in found if m.re is PART}
        for m, path in sorted(found, key=lambda f: f[1].name):
            if m.re is PART:
                names = self.pq.read_table(path, columns=["file_name"]).column(0)
                self.keys.update(names.to_pylist())
            elif int(m[1]) not in parts:  # a killed run's unfinished part: finish it
                rows = list(Journal(path).records())
                if rows:
                    self._write_part(int(m[1]), rows)
                self.keys.update(r["file_name"] for r in rows)
        for m, path in found:  # stale (their part is in) or just turned into parts
            if m.re is JOURNAL:
                path.unlink()
        self.seq = max((int(m[1]) for m, _ in found), default=-1) + 1
        self.journal = Journal(self.dir / f"_journal-{self.seq:05}.jsonl")

    def _write(self, caption: Caption) -> None:
        row = asdict(caption)
        self.journal.append(row)
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_part:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self._write_part(self.seq, self.rows)
            self.journal.remove()  # only after its part is in
            self.rows = []
            self.seq += 1
            self.journal = Journal(self.dir / f"_journal-{self.seq:05}.jsonl")

    def _write_part(self, seq: int, rows: list[dict[str, Any]]) -> None:
        table = self.pa.Table.from_pylist(rows, schema=self.schema)
        tmp = self.dir / f".part-{seq:05}.parquet.{os.getpid()}.tmp"
        self.pq.write_table(table, tmp)
        os.replace(tmp, self.dir / f"part-{seq:05}.parquet")

    def close(self) -> None:
        self._flush()
        self.journal.close()
        super().close()
