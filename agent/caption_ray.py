"""``streamagent caption DIR --ray``: the same captioning on a Ray cluster, with Ray Data.

- The driver (where the command runs) lists the folder as the local run does, skipping what
  the output has, and puts the paths to caption in Ray's object store, ``batch_size`` to a
  block (Arrow tables; the driver keeps one reference per block, the store spills to disk).
- Ray Data maps the blocks through ``CaptionActor``: a stateful actor (``map_batches`` with a
  callable class) that loads the model once and captions ``concurrency`` images at a time on
  its own event loop, ``--actors`` of them, each with ``--num-gpus`` / ``--num-cpus``. The
  actor reads the images itself, from the folder every node sees at the same path (a shared
  file system): the pixels never cross the object store, and a block of paths is tiny.
- The rows come back to the driver (``iter_batches``) and go through the same ``Sink`` as a
  local run. One writer: the formats, the append-only files and the resume rules are those of
  the local run, and the sink refuses a second caption of one image (``track``).

Exactly once, node loss included: Ray Data restarts a lost actor and retries its tasks; a
block's rows reach the driver only when its task has finished, so a retried block is written
once. If the run fails anyway (the driver's node lost, no node left for the model), run the
command again: it resumes from the output. Actors writing shards of their own would need a
commit protocol for a shard half-written by an actor that died; the driver as the only writer
needs none, and a caption row (~300 bytes) is far less than the driver can write.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.caption import FAIL_LIMIT, CaptionAsk, CaptionRun, answer
from agent.caption_files import read, walk
from agent.caption_journal import CaptionError
from agent.caption_sinks import Caption, Failure, Sink
from agent.config import ModelConfig


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    """The cluster (``auto``, ``ray://host:10001``); ``None``: a local one, started here."""
    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 64
    concurrency: int = 16
    """Images in flight in each actor."""
    progress: bool = True
    """Ray Data's progress bars."""
    plugins: tuple[str, ...] = ()
    """Plugins (``module:object``) the actors register beside the installed entry points."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources each actor needs (to place the actors on chosen nodes)."""


class CaptionActor:
    """One model in a Ray Data actor: captions a batch of paths, a row per image."""

    def __init__(self, name: str, model: dict[str, Any], folder: str, ask: dict[str, Any],
                 concurrency: int, plugins: tuple[str, ...] = ()) -> None:
        from agent.plugins import collect, get_plugin_manager
        from agent.ray.replica import load_plugin

        pm = get_plugin_manager()
        for spec in plugins:
            pm.register(load_plugin(spec))
        config = ModelConfig.model_validate(model)
        kinds = collect(pm).engines
        if config.engine not in kinds:
            raise CaptionError(f"engine {config.engine!r} is not installed on this node; "
                               f"installed: {sorted(kinds)}")
        self.engine = kinds[config.engine](name, config)
        self.model = str(config.source or name)
        self.folder = Path(folder)
        self.ask = CaptionAsk(**ask)
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self._run(self.engine.start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        keys = [str(k) for k in batch["file_name"]]
        rows = self._run(self._batch(keys))
        return {column: [row.get(column) for row in rows]
                for column in ("file_name", "text", "error", "seconds")}

    async def _batch(self, keys: list[str]) -> list[dict[str, Any]]:
        slots = asyncio.Semaphore(self.concurrency)

        async def one(key: str) -> dict[str, Any]:
            async with slots:
                try:
                    image = await asyncio.to_thread(read, self.folder / key)
                except Exception as exc:  # that file's error
                    return {"file_name": key, "error": f"not a readable image: {exc}"}
                began = time.perf_counter()
                try:
                    text = await answer(self.engine, self.ask.request(image))
                except Exception as exc:  # that image's error, tried again next run
                    return {"file_name": key,
                            "error": f"the model failed: {type(exc).__name__}: {exc}"}
                return {"file_name": key, "text": self.ask.text(text),
                        "seconds": round(time.perf_counter() - began, 4)}

        return list(await asyncio.gather(*(one(k) for k in keys)))


def caption_on_ray(folder: Path, sink: Sink, ask: CaptionAsk, name: str, model: ModelConfig,
                   opts: RayOptions) -> CaptionRun:
    """Caption ``folder`` into ``sink`` with Ray Data (see the module's docstring)."""
    try:
        import pyarrow as pa
        import ray
        import ray.data
    except ImportError:
        raise CaptionError("--ray needs Ray Data: pip install 'streamagent[ray]'") from None
    if ray.is_initialized():
        pass  # the caller's cluster (tests, notebooks)
    elif opts.address:
        ray.init(address=opts.address)
    else:
        ray.init(include_dashboard=False)  # a local cluster, started here
    ray.data.DataContext.get_current().enable_progress_bars = opts.progress
    run = CaptionRun(output=sink.where, errors_at=sink.errors_where)
    sink.open()
    try:
        blocks = _blocks(folder, sink, run, opts.batch_size, pa, ray)
        if not blocks:
            run.loaded = False
            return run
        actors = min(opts.actors, len(blocks))  # no more actors than batches to give them
        rows = ray.data.from_arrow_refs(blocks).map_batches(
            CaptionActor, batch_size=opts.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), fn_constructor_kwargs={
                "name": name, "model": model.model_dump(), "folder": str(folder.resolve()),
                "ask": {**asdict(ask), "options": dict(ask.options)},
                "concurrency": opts.concurrency, "plugins": opts.plugins},
            num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, resources=opts.resources or None)
        began = time.perf_counter()
        try:
            _write(rows.iter_batches(batch_size=None, batch_format="pyarrow"), sink, ask,
                   str(model.source or name), run)
        finally:
            run.seconds = time.perf_counter() - began
    finally:
        sink.close()
    return run


def _blocks(folder: Path, sink: Sink, run: CaptionRun, size: int, pa: Any,
            ray: Any) -> list[Any]:
    """The paths to caption, in the object store ``size`` to a block (the listing streams;
    the driver holds one reference per block); directories that cannot be listed recorded
    as failures."""
    blocks, chunk = [], []
    unlisted: list[Failure] = []
    for key in walk(folder, lambda rel, msg: unlisted.append(Failure(rel, msg))):
        if sink.done(key):
            run.skipped += 1
            continue
        chunk.append(key)
        if len(chunk) == size:
            blocks.append(ray.put(pa.table({"file_name": chunk})))
            chunk = []
    if chunk:
        blocks.append(ray.put(pa.table({"file_name": chunk})))
    for failure in unlisted:
        sink.fail(failure)
        run.fail(failure.file_name, failure.error)
    return blocks


def _write(batches: Any, sink: Sink, ask: CaptionAsk, model: str, run: CaptionRun) -> None:
    failing = 0
    for batch in batches:
        for row in batch.to_pylist():
            if row.get("text") is None:
                failing += "model failed" in (row.get("error") or "")
                sink.fail(Failure(row["file_name"], str(row.get("error"))))
                run.fail(row["file_name"], str(row.get("error")))
                if failing >= FAIL_LIMIT:
                    raise CaptionError(f"the model failed on {failing} images in a row; "
                                       f"the last: {row.get('error')}")
                continue
            failing = 0
            if sink.write(Caption(row["file_name"], row["text"], model, ask.prompt, ask.task,
                                  float(row.get("seconds") or 0.0))):
                run.done += 1
