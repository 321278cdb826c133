"""How soon a spoken turn is heard: the user stops speaking -> the server says so.

One realtime client on the embedded default streams, in real time (100 ms appends at 24 kHz,
no timestamps), 1 s of silence, a spoken sentence (flite's 16 kHz ``kal16``) and 2 s of
silence, ``--rounds`` times, with server VAD (transcription by the embedded ``asr``, no
answers) and with ``semantic_vad`` (eagerness ``auto``). From the moment the last sample of
speech was sent to ``input_audio_buffer.speech_stopped`` and to the transcript's
``.completed``; and from the first sample of speech to ``speech_started`` (the client may stop
an answer's audio then). The turn's own silence is part of the wait: server VAD waits 500 ms
of it; ``semantic_vad`` 200 ms when the end-of-turn model hears the sentence as finished.

``--tree DIR`` runs the same rounds against another tree's server in the same run (e.g. a
``git worktree`` of an older commit), so the two are compared on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import websockets

from benchmarks.capacity import Server
from benchmarks.docs import write_block
from benchmarks.listening import read
from benchmarks.run import ROOT, machine

RATE = 24000
CHUNK = RATE // 10
SENTENCE = "open the door please."
MODES = {"server_vad": {"type": "server_vad", "create_response": False},
         "semantic_vad": {"type": "semantic_vad", "create_response": False}}


def sentence() -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(["flite", "-voice", "kal16", "-t", SENTENCE, "-o", str(path)],
                       check=True)
        audio, rate = read(path)
    return np.trim_zeros(soxr.resample(audio, rate, RATE), "b").astype(np.float32)


async def rounds(url: str, turn: dict[str, Any], n: int) -> dict[str, list[float]]:
    """Per round: speech start -> speech_started, speech end -> speech_stopped and
    -> transcript (s)."""
    said = sentence()
    one = np.concatenate([np.zeros(RATE), said, np.zeros(2 * RATE)])
    one = np.concatenate([one, np.zeros(-one.size % CHUNK)])
    pcm = (np.clip(np.tile(one, n), -1, 1) * 32767).astype("<i2").tobytes()
    starts = [k * one.size / RATE + 1.0 for k in range(n)]
    ends = [s + said.size / RATE for s in starts]
    seen: dict[str, list[float]] = {"started": [], "stopped": [], "transcript": []}
    kinds = {"input_audio_buffer.speech_started": "started",
             "input_audio_buffer.speech_stopped": "stopped",
             "conversation.item.input_audio_transcription.completed": "transcript"}
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["text"], "streamagent": {"handlers": []},
            "audio": {"input": {"transcription": {"model": "asr"}, "turn_detection": turn}}}}))

        async def receive() -> None:
            async for raw in ws:
                kind = kinds.get(json.loads(raw)["type"])
                if kind:
                    seen[kind].append(time.perf_counter() - began)

        began = time.perf_counter()
        listener = asyncio.create_task(receive())
        step = 2 * CHUNK
        for i in range(0, len(pcm), step):
            await asyncio.sleep(max(0.0, began + i / 2 / RATE - time.perf_counter()))
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(pcm[i:i + step]).decode()}))
        await asyncio.sleep(5)
        listener.cancel()
    length = one.size / RATE

    def lags(times: list[float], marks: list[float]) -> list[float]:
        """Each round's first event within a round's length of its mark: a round with none
        is left out, and shifts no other."""
        out = []
        for mark in marks:
            after = [t for t in times if mark <= t < mark + length]
            if after:
                out.append(min(after) - mark)
        return out

    return {"started": lags(seen["started"], starts), "stopped": lags(seen["stopped"], ends),
            "transcript": lags(seen["transcript"], ends)}


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    p95 = sorted(values)[min(len(values) - 1, int(0.95 * len(values)))]
    return f"{statistics.median(values):.2f} / {p95:.2f}"


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.turns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tree", type=Path, help="another tree to compare, in the same run")
    parser.add_argument("--tree-name", default="other tree", help="how the table names it")
    parser.add_argument("--no-write", action="store_true", help="leave docs/performance.md")
    args = parser.parse_args()
    trees = {"this tree": ROOT, **({args.tree_name: args.tree} if args.tree else {})}
    rows = []
    for name, tree in trees.items():
        server = Server(None, cwd=tree)
        try:
            for mode, turn in MODES.items():
                got = await rounds(server.url, turn, args.rounds)
                rows.append(f"| {name} | {mode} | {summary(got['started'])} | "
                            f"{summary(got['stopped'])} | {summary(got['transcript'])} | "
                            f"{len(got['transcript'])}/{args.rounds} |")
                print(rows[-1], flush=True)
        finally:
            server.stop()
    text = "\n".join([
        "<!-- bench:turns -->",
        "### Turns: how soon the server hears that the user stopped",
        "",
        f"Measured by `python -m benchmarks.turns` on {time.strftime('%Y-%m-%d')}, {machine()}:"
        f" one realtime client streams {SENTENCE!r} (flite `kal16`) between silences in real "
        f"time, {args.rounds} rounds, transcription by the embedded `asr`. Seconds, p50 / p95;"
        " the turn's own silence is part of the wait (server VAD 0.5 s, `semantic_vad` 0.2 s"
        " when the end-of-turn model hears it finished).",
        "",
        "| server | turn detection | speech start -> `speech_started` | speech end -> "
        "`speech_stopped` | speech end -> transcript | turns transcribed |",
        "|---|---|---|---|---|---|", *rows, "<!-- /bench:turns -->"])
    print(text)
    if not args.no_write:
        write_block("turns", text)


if __name__ == "__main__":
    asyncio.run(main())
