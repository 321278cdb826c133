"""``streamagent caption`` at dataset scale: every output format, resume after
``kill -9``, trigger words, per-image errors, the model's own prompt, a bounded number of
images in flight. The model is ``agent.testing.FakeEngine`` (the real ThreadedEngine path);
images are tiny PNGs made here."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from agent import caption
from agent.caption import FAIL_LIMIT, CaptionAsk, CaptionError, caption_folder, own_ask
from agent.caption_files import walk
from agent.caption_journal import Journal
from agent.caption_parquet import ParquetSink
from agent.caption_sinks import Sink, open_sink
from agent.cli import main
from agent.config import ModelConfig
from agent.engine import ModelRequest
from agent.parts import Part
from agent.testing import FakeEngine

ROOT = Path(__file__).resolve().parents[1]
OUT = {"txt": None, "jsonl": "c.jsonl", "json": "c.json", "parquet": "c.parquet"}


def images(folder: Path, n: int, bad: bool = True) -> set[str]:
    """``n`` tiny PNGs (a third in a subfolder) and, with ``bad``, an unreadable .jpg."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    keys = set()
    for i in range(n):
        key = f"sub/{i}.png" if i % 3 == 0 else f"{i}.png"
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(folder / key)
        keys.add(key)
    if bad:
        (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / ".hidden.png").write_bytes(b"skipped")
    (folder / "notes.md").write_text("not an image")
    return keys


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fake(**options: Any) -> FakeEngine:
    return FakeEngine("fake", ModelConfig(engine="fake", options={"tokens": 3, **options}))


def sink_for(fmt: str, folder: Path, tmp: Path, **kw: Any) -> Sink:
    out = OUT[fmt]
    return open_sink(fmt, folder, tmp / out if out else None, **kw)


def captions(fmt: str, folder: Path, tmp: Path) -> list[tuple[str, str]]:
    """(file_name, text) of every caption in the output, duplicates kept."""
    if fmt == "txt":
        return [(str(p.relative_to(folder).with_suffix(".png")), p.read_text())
                for p in folder.rglob("*.txt")]
    if fmt == "jsonl":
        return [(r["file_name"], r["text"]) for r in lines(tmp / "c.jsonl")]
    if fmt == "json":
        return list(json.loads((tmp / "c.json").read_text())["captions"].items())
    import pyarrow.parquet as pq

    table = pq.read_table(tmp / "c.parquet").to_pydict()
    return list(zip(table["file_name"], table["text"], strict=True))


@pytest.mark.parametrize("fmt", sorted(OUT))
def test_each_format_captions_every_image_once_and_resumes(fmt: str, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    keys = images(folder, 10)
    ask = CaptionAsk(prefix="ohwx, ", suffix=", best quality")
    engine = fake()
    run = asyncio.run(caption_folder(engine, folder, sink=sink_for(fmt, folder, tmp_path),
                                     ask=ask, progress=False, start=engine.start))
    assert (run.done, run.skipped, run.errors) == (10, 0, 1)
    assert run.first_errors[0][0] == "broken.jpg"
    got = captions(fmt, folder, tmp_path)
    assert sorted(k for k, _ in got) == sorted(keys)
    assert {t for _, t in got} == {"ohwx, tok0 tok1 tok2, best quality"}
    for extra in ("new.png", "sub/new.png"):
        Image.new("RGB", (8, 8)).save(folder / extra)
    again = fake()
    run = asyncio.run(caption_folder(again, folder, sink=sink_for(fmt, folder, tmp_path),
                                     ask=ask, progress=False, start=again.start))
    assert (run.done, run.skipped) == (2, 10)
    assert sorted(k for k, _ in captions(fmt, folder, tmp_path)) == sorted(
        keys | {"new.png", "sub/new.png"})
    if fmt == "json":
        assert json.loads((tmp_path / "c.json").read_text())["errors"] == {
            "broken.jpg": run.first_errors[0][1]}
    else:  # a JSON Lines errors log, one record per failed attempt
        log = tmp_path / "c.errors.jsonl" if fmt != "txt" else folder / "captions.errors.jsonl"
        assert [r["file_name"] for r in lines(log)] == ["broken.jpg"] * 2


def test_overwrite_starts_over(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    images(folder, 4, bad=False)
    for ask in (CaptionAsk(prefix="a "), CaptionAsk(prefix="b ")):
        for fmt in ("txt", "jsonl"):
            engine = fake()
            asyncio.run(caption_folder(engine, folder, progress=False, ask=ask,
                                       sink=sink_for(fmt, folder, tmp_path, overwrite=True),
                                       start=engine.start))
    for fmt in ("txt", "jsonl"):
        got = captions(fmt, folder, tmp_path)
        assert len(got) == 4 and {t for _, t in got} == {"b tok0 tok1 tok2"}


KILLED = """
import asyncio, sys, time
from pathlib import Path
from agent.caption import caption_folder
from agent.caption_parquet import ParquetSink
from agent.caption_sinks import open_sink
from agent.config import ModelConfig
from agent.engine import ThreadedEngine

class Slow(ThreadedEngine):  # lighter to import than agent.testing: four of these start at once
    def generate(self, request, cancelled):
        time.sleep(0.02)
        yield "a slow caption"

fmt, folder, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
sink = (ParquetSink(out, rows_per_part=4, errors=out.with_name("c.errors.jsonl"))
        if fmt == "parquet" else open_sink(fmt, folder, None if fmt == "txt" else out))
asyncio.run(caption_folder(Slow("slow", ModelConfig(engine="slow")), folder, sink=sink,
                           concurrency=4, progress=False))
"""


def progress(fmt: str, folder: Path, tmp: Path) -> int:
    """How many captions a running run has put on disk so far."""
    if fmt == "txt":
        return sum(1 for _ in folder.rglob("*.txt"))
    files = {"jsonl": [tmp / "c.jsonl"], "json": [tmp / "c.json.journal"],
             "parquet": list((tmp / "c.parquet").glob("_journal-*.jsonl"))}[fmt]
    parts = len(list((tmp / "c.parquet").glob("part-*"))) * 4 if fmt == "parquet" else 0
    return parts + sum(f.read_bytes().count(b"\n") for f in files if f.exists())


def test_kill_9_then_rerun_every_format_has_every_image_once(tmp_path: Path) -> None:
    """A run killed with SIGKILL mid-way (for jsonl and parquet, its last line torn as a kill
    during a write leaves it), then rerun: every image has exactly one caption."""
    runs = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for fmt in OUT:
        folder = tmp_path / fmt / "images"
        keys = images(folder, 60, bad=False)
        out = tmp_path / fmt / (OUT[fmt] or "c.txt")
        proc = subprocess.Popen([sys.executable, "-c", KILLED, fmt, str(folder), str(out)],
                                env=env, stderr=subprocess.PIPE)
        runs[fmt] = (folder, keys, proc)
    deadline, running = time.monotonic() + 60, set(runs)
    while running:  # each killed as soon as it has 10 captions on disk
        for fmt in sorted(running):
            folder, _, proc = runs[fmt]
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            if progress(fmt, folder, folder.parent) >= 10:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                running.remove(fmt)
        assert time.monotonic() < deadline, f"no progress: {running}"
        time.sleep(0.01)
    for fmt, (folder, keys, proc) in runs.items():
        tmp = folder.parent
        assert proc.stderr is not None
        proc.stderr.close()
        before = progress(fmt, folder, tmp)
        assert 10 <= before < len(keys), f"{fmt}: killed after {before} of {len(keys)}"
        torn = {"jsonl": tmp / "c.jsonl", "parquet": next(
            (tmp / "c.parquet").glob("_journal-*.jsonl"), None)}.get(fmt)
        if torn is not None:
            with torn.open("ab") as f:
                f.write(b'{"file_name": "sub/0.png", "te')
        engine = fake()
        run = asyncio.run(caption_folder(engine, folder, sink=sink_for(fmt, folder, tmp),
                                         progress=False, start=engine.start))
        got = [k for k, _ in captions(fmt, folder, tmp)]
        assert sorted(got) == sorted(keys), fmt  # each image once
        assert run.skipped >= before - 1 and run.done == len(keys) - run.skipped, fmt


def test_parquet_a_part_renamed_in_before_its_journal_was_deleted(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    keys = images(folder, 7, bad=False)
    out = tmp_path / "c.parquet"
    sink = ParquetSink(out, rows_per_part=4, errors=tmp_path / "e.jsonl")
    engine = fake()
    asyncio.run(caption_folder(engine, folder, sink=sink, progress=False, start=engine.start))
    import pyarrow.parquet as pq

    part = pq.read_table(out / "part-00000.parquet").to_pylist()
    journal = Journal(out / "_journal-00000.jsonl")  # as a kill would have left it
    for row in part:
        journal.append(row)
    journal.close()
    sink = ParquetSink(out, errors=tmp_path / "e.jsonl")
    sink.open()
    sink.close()
    assert not list(out.glob("_journal-*"))
    assert sorted(pq.read_table(out).column("file_name").to_pylist()) == sorted(keys)


def test_a_corrupt_line_that_is_not_the_last_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"file_name": "a.png", "text": "x"}\nnot json\n{"file_name": "b.png"}\n')
    with pytest.raises(CaptionError, match="c.jsonl:2: not a caption record"):
        list(Journal(path).records())


class Counting(FakeEngine):
    """Counts the streams open at once, and how far the listing ran ahead of the model."""

    def load(self) -> None:
        super().load()
        self.open = self.most = self.started = self.ahead = 0

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Part, None]:
        self.open += 1
        self.most = max(self.most, self.open)
        self.started += 1
        self.ahead = max(self.ahead, LISTED[0] - self.started)
        try:
            await asyncio.sleep(0.002)
            async for part in super().stream(request):
                yield part
        finally:
            self.open -= 1


LISTED = [0]


def test_a_bounded_number_of_images_in_flight(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "images"
    images(folder, 60, bad=False)

    def counted(folder: Path, on_error: Any = None) -> Iterator[str]:
        LISTED[0] = 0
        for key in walk(folder, on_error):
            LISTED[0] += 1
            yield key

    monkeypatch.setattr(caption, "walk", counted)
    engine = Counting("fake", ModelConfig(engine="fake", options={"tokens": 1}))
    run = asyncio.run(caption_folder(engine, folder, tmp_path / "c.jsonl", concurrency=4,
                                     progress=False, start=engine.start))
    assert run.done == 60 and engine.most == 4
    # listed, not yet asked: the listing's buffer, the queue, the workers reading a file
    assert engine.ahead <= 4 * 5, engine.ahead


def test_a_failing_model_stops_the_run_and_its_failures_are_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    images(folder, FAIL_LIMIT + 20, bad=False)
    engine = fake(fail_requests=1000)
    with pytest.raises(CaptionError, match=f"failed on {FAIL_LIMIT} images in a row"):
        asyncio.run(caption_folder(engine, folder, tmp_path / "c.jsonl", concurrency=2,
                                   progress=False, start=engine.start))
    log = lines(tmp_path / "c.errors.jsonl")
    assert len(log) >= FAIL_LIMIT and "fake engine failure" in log[0]["error"]
    assert not (tmp_path / "c.jsonl").exists()


def test_the_model_is_asked_its_own_way_unless_told(tmp_path: Path) -> None:
    joy = own_ask("fancyfeast/llama-joycaption-alpha-two-hf-llava")
    assert joy.instructions == "You are a helpful image captioner." and joy.task == "caption"
    assert joy.options == {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
    blip = own_ask("Salesforce/blip2-opt-2.7b", options={"max_new_tokens": 9})
    assert (blip.task, blip.instructions, dict(blip.options)) == (
        "caption", "", {"max_new_tokens": 9})
    mine = own_ask("Salesforce/blip2-opt-2.7b", prompt="What breed is it?")
    assert (mine.task, mine.prompt) == ("", "What breed is it?")
    assert own_ask("m", task="<CAPTION>").task == "<CAPTION>"
    folder = tmp_path / "images"
    images(folder, 2, bad=False)
    engine = fake()
    asyncio.run(caption_folder(engine, folder, tmp_path / "c.jsonl", progress=False,
                               ask=own_ask("joycaption", options={"max_new_tokens": 2}),
                               start=engine.start))
    asked = engine.requests[0]
    assert (asked.task, asked.instructions, asked.options["max_new_tokens"]) == (
        "caption", "You are a helpful image captioner.", 2)
    assert asked.images[0].shape == (8, 8, 3)
    rows = lines(tmp_path / "c.jsonl")
    assert {len(r["text"].split()) for r in rows} == {2}  # max_new_tokens reached the engine


def test_the_listing_streams_in_a_stable_order(tmp_path: Path) -> None:
    keys = images(tmp_path, 30)
    first = list(walk(tmp_path))
    assert first == list(walk(tmp_path)) and sorted(first) == sorted(keys | {"broken.jpg"})
    top = [k for k in first if "/" not in k]
    assert first[:len(top)] == top  # a directory's files, then its subdirectories


@pytest.mark.parametrize(("args", "words"), [
    (["-o", "c.csv"], "cannot tell the format from 'c.csv'"),
    (["--format", "txt", "-o", "c.jsonl"], "drop -o"),
    (["--format", "parquet"], "name it with -o"),
])
def test_output_mistakes_are_explained(args: list[str], words: str, tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["caption", str(tmp_path), "--source", str(tmp_path),
                                    *args])
    assert out.exit_code == 1 and words in out.output, out.output


def test_caption_help_answers_the_questions() -> None:
    out = CliRunner().invoke(main, ["caption", "--help"]).output
    for words in ("--format", "--prefix", "--skip-existing", "--ray-address", "--actors",
                  "<MORE_DETAILED_CAPTION>", "kill -9", "Examples:", "--errors"):
        assert words in out, words
