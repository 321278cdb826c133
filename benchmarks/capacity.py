"""`make bench`: how many live sessions one machine serves on the embedded default.

Workload 1 (words): N live sessions, each showing a new word every second (640x480 JPEG at
10 fps, sampled at 1 fps) plus looping speech at 24 kHz (flite's ``VOICE``, a sentence
and 2 s of silence), with every default handler (text in
view, speech, faces). A word counts as read when the text-in-view response for the window it was
shown in contains it; lag is window close (when the next second begins, on the client's clock)
-> first delta of that response. N passes when every session reads >= 95% of its words and the
lag p95 is <= 1.5 s. The first SETTLE_S seconds of each session are not scored.

Workload 2 (static): N sessions show the same word for 30 s, then a new one (frames only).
Reports the server's CPU over the static part and whether, and how fast, the change was read.

Each workload runs against the server as configured today and against the pre-tuning settings
(``BASELINE``: no scene-change gating, RapidOCR's stock detection size, classifier and threads),
in one run, so the ratio compares like with like on a machine that may be busy.

``--speech-search [N ...]``: workload 1 at N sessions (8 and 12 by default) with the
recognizer's ``accurate`` search and its ``fast`` one (``models.asr.options.search``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets
import yaml
from PIL import Image, ImageDraw, ImageFont

from agent.testing import FONT
from benchmarks import capacity_report, run
from benchmarks.docs import write_block
from benchmarks.run import ROOT, machine

FPS = 10
WORDS = ("APPLE BANANA CHERRY DOLPHIN ELEPHANT FOREST GARDEN HAMMER ISLAND JACKET KITTEN LEMON "
         "MONKEY NUMBER ORANGE PENCIL QUARTER RABBIT SILVER TURTLE UMBRELLA VIOLIN WINDOW "
         "YELLOW ZEBRA BASKET CANDLE DINNER ENGINE FLOWER GUITAR HELMET").split()
SENTENCE = "hello world. this is a test of speech recognition on a busy machine"
BASELINE: dict[str, Any] = {
    "handlers": {h: {"gating": {"enabled": False}} for h in ("text_in_view", "faces")},
    "models": {"ocr": {"engine": "rapidocr", "workers": 1, "options": {
        "det_limit_side_len": 736, "det_limit_type": "min", "use_cls": True, "threads": -1}},
        "faces": {"engine": "haar-faces", "workers": 1},
        "asr": {"engine": "pocketsphinx", "workers": 1}},
}
"""One worker per engine, as before the scheduler. (Speech then decoded on a thread that held
the interpreter lock; here its one worker is a process, so the baseline is kinder than the old
code was.)"""


def jpeg_url(word: str) -> str:
    img = Image.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, 72)
    box = draw.textbbox((0, 0), word, font=font)
    draw.text(((640 - box[2] + box[0]) // 2, (480 - box[3] + box[1]) // 2), word,
              fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


VOICE = "kal16"
"""The looping speech's flite voice: 16 kHz, full band as a microphone gives. (Until
2026-12-05 it was ``kal``, the same voice at 8 kHz, upsampled: telephone band, of which the
recognizer reads 23% of the words for 1.4x the CPU; ``--speech-search`` measures both.)"""


def speech_chunks(voice: str = VOICE) -> list[str]:
    """Flite speech with a pause, resampled to 24 kHz, as 100 ms base64 PCM16 chunks.
    ``kal`` is an 8 kHz voice (telephone band, upsampled: the recognizer reads 23% of its
    words and spends about 1.4x the CPU of the same voice at 16 kHz, ``kal16``, or 1.3x
    that of human recordings; benchmarks/listening.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["flite", "-voice", voice, "-t", SENTENCE, "-o", str(wav)], check=True)
        raw = wav.read_bytes()
    rate = int.from_bytes(raw[24:28], "little")
    pcm = np.frombuffer(raw[44:], "<i2").astype(np.float32)
    t = np.arange(int(pcm.size * 24000 / rate)) * rate / 24000
    speech = np.interp(t, np.arange(pcm.size), pcm)
    audio = np.concatenate([speech, np.zeros(24000 * 2)]).astype("<i2")
    return [base64.b64encode(audio[i:i + 2400].tobytes()).decode()
            for i in range(0, audio.size - 2399, 2400)]


class Server(run.Server):
    """The embedded default in its own process (CPU and memory read from /proc); ``cwd``: the
    tree whose code it runs."""

    def __init__(self, config: dict[str, Any] | None, cwd: Path = ROOT) -> None:
        self.tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(config or {}, self.tmp)
        self.tmp.close()
        super().__init__("--embedded", self.tmp.name, cwd=cwd)
        Path(self.tmp.name).unlink()

    def cpu_s(self) -> float:
        """The server's CPU seconds with its worker processes' (the recognizer's)."""
        return sum(_cpu_s(pid) for pid in _tree(self.proc.pid))


def _tree(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        kids += [int(k) for k in task.read_text().split()]
    return [pid, *(p for k in kids for p in _tree(k))]


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SETTLE_S = 2
SPEECH_WAIT_S = 12
"""With speech, how long a session waits for transcripts after its last frame: under load
they come seconds after their utterance (none was lost at 8 sessions with 15 s)."""
"""The first seconds of each session are not scored (the session is being set up)."""


@dataclass
class Run:
    """One session's result: which windows were read, and each read word's lag."""

    shown: dict[int, str]
    read: dict[int, float] = field(default_factory=dict)
    heard: int = 0
    """Utterances the speech handler transcribed (responses with text)."""
    speech_lags: list[float] = field(default_factory=list)
    """Each transcript's first words after its utterance ended (the window's end, on the
    client's clock), in seconds."""

    @property
    def fraction(self) -> float:
        scored = [k for k in self.shown if k >= SETTLE_S]
        return sum(k in self.read for k in scored) / max(1, len(scored))

    @property
    def lags(self) -> list[float]:
        return [lag for k, lag in self.read.items() if k >= SETTLE_S]


async def session(url: str, script: list[str], frames: dict[str, str],
                  audio: list[str] | None, phase: int = 0) -> Run:
    """Stream ``script`` (one word per second); collect which windows' words were read.
    ``phase``: where in its loop the speech starts (chunks), so sessions do not all finish an
    utterance at the same moment, as people talking to one server would not."""
    run = Run(dict(enumerate(script)))
    window_of: dict[str, int] = {}
    text: dict[str, str] = {}
    speech: dict[str, float] = {}  # response id -> its utterance's end, media seconds
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {
            "streamagent": {"live": True, "sample_fps": 1}}}))

        async def receive() -> None:
            async for raw in ws:
                ev = json.loads(raw)
                if ev["type"] == "response.created":
                    meta = ev["response"]["metadata"]
                    if meta.get("handler") == "text_in_view":
                        window_of[ev["response"]["id"]] = int(meta["window_start_ms"]) // 1000
                    elif meta.get("handler") == "speech":
                        speech[ev["response"]["id"]] = int(meta["window_end_ms"]) / 1000
                elif ev["type"] == "response.output_text.delta":
                    rid = ev["response_id"]
                    if rid in speech:
                        run.speech_lags.append(time.perf_counter() - began - speech.pop(rid))
                        run.heard += 1
                    k = window_of.get(rid)
                    if k is None:
                        continue
                    text[rid] = text.get(rid, "") + ev["delta"]
                    if k in run.shown and run.shown[k] in text[rid].upper() and k not in run.read:
                        run.read[k] = time.perf_counter() - (began + k + 1)  # due to close

        began = time.perf_counter()
        receiver = asyncio.create_task(receive())
        for i in range(len(script) * FPS + 1):
            ts = i / FPS
            await asyncio.sleep(max(0.0, began + ts - time.perf_counter()))
            second = min(i // FPS, len(script) - 1)
            await ws.send('{"type":"conversation.item.create","item":{"type":"message","role":'
                          f'"user","content":[{{"type":"input_image","image_url":'
                          f'"{frames[script[second]]}","streamagent":{{"timestamp":{ts:.3f}}}}}]}}}}')
            if audio:
                await ws.send(f'{{"type":"input_audio_buffer.append","audio":"{audio[(i + phase) % len(audio)]}"'
                              f',"streamagent":{{"timestamp":{ts:.3f}}}}}')
        await asyncio.sleep(SPEECH_WAIT_S if audio else 3)  # late transcripts still count
        receiver.cancel()
    return run


def summary(runs: list[Run], cpu_cores: float) -> dict[str, Any]:
    lags = sorted(lag for r in runs for lag in r.lags)
    return {
        "sessions": len(runs),
        "words_min": min(r.fraction for r in runs),
        "words_mean": statistics.mean(r.fraction for r in runs),
        "lag_p50_s": statistics.median(lags) if lags else float("nan"),
        "lag_p95_s": _p95(lags),
        "server_cores": cpu_cores,
        "heard": sum(r.heard for r in runs),
        "speech_lag_p95_s": _p95([lag for r in runs for lag in r.speech_lags]),
    }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


async def words(server: Server, sessions: list[int], seconds: int,
                speech: bool = True, voice: str = VOICE) -> list[dict[str, Any]]:
    frames = {w: jpeg_url(w) for w in WORDS}
    audio = speech_chunks(voice) if speech else None
    rows = []
    for n in sessions:
        scripts = [[WORDS[(k + 7 * s) % len(WORDS)] for k in range(seconds)] for s in range(n)]
        before, t0 = server.cpu_s(), time.perf_counter()
        phases = [len(audio) * s // n for s in range(n)] if audio else [0] * n
        runs = await asyncio.gather(*(session(server.url, sc, frames, audio, ph)
                                      for sc, ph in zip(scripts, phases, strict=True)))
        row = summary(list(runs), (server.cpu_s() - before) / (time.perf_counter() - t0))
        print("words" + ("" if speech else " (no speech)"), row, flush=True)
        rows.append(row)
        if row["words_min"] < 0.6:  # far past capacity: larger N only take longer
            break
    return rows


async def static(server: Server, n: int, still_s: int = 30) -> dict[str, Any]:
    frames = {w: jpeg_url(w) for w in WORDS[:2]}
    script = [WORDS[0]] * still_s + [WORDS[1]] * 3
    cpu: list[float] = []

    async def meter() -> None:  # the server's CPU over the still part, after a settling second
        await asyncio.sleep(3)
        before, t0 = server.cpu_s(), time.perf_counter()
        await asyncio.sleep(still_s - 4)
        cpu.append((server.cpu_s() - before) / (time.perf_counter() - t0))

    task = asyncio.create_task(meter())
    runs = await asyncio.gather(*(session(server.url, script, frames, None) for _ in range(n)))
    await task
    changed = [r.read.get(still_s) for r in runs]
    lags = sorted(x for x in changed if x is not None)
    row = {"sessions": n, "still_s": still_s, "server_cores": cpu[0],
           "change_read": len(lags) / n,
           "change_lag_p50_s": statistics.median(lags) if lags else float("nan"),
           "change_lag_p95_s": _p95(lags)}
    print("static", row, flush=True)
    return row


async def measure(config: dict[str, Any] | None, sessions: list[int], seconds: int,
                  static_n: int) -> dict[str, Any]:
    server = Server(config)
    try:
        await session(server.url, WORDS[:2], {w: jpeg_url(w) for w in WORDS[:2]}, None)  # warm
        return {"words": await words(server, sessions, seconds),
                "static": await static(server, static_n),
                "words_silent": await words(server, sessions, seconds, speech=False)}
    finally:
        server.stop()




def ocr_ms(options: dict[str, Any], frames: int = 12) -> float:
    """Median time to read one 640x480 word frame on one RapidOCR instance."""
    from agent.config import ModelConfig
    from agent.engine import ModelRequest
    from plugins.text_in_view import RapidOCREngine

    engine = RapidOCREngine("ocr", ModelConfig(engine="rapidocr", options=options))
    engine.load()
    times = []
    for i in range(frames + 1):
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(
            jpeg_url(WORDS[i]).split(",", 1)[1]))).convert("RGB"))
        t0 = time.perf_counter()
        list(engine.generate(ModelRequest(images=(img,)), threading.Event()))
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[1:])


def gate_us(n: int = 500) -> tuple[float, float]:
    """Microseconds to thumbnail one 640x480 JPEG, and to compare two thumbnails."""
    from agent.gating import changed_pixels, thumbnail
    from agent.media import Frame

    a, b = (jpeg_url(w).split(",", 1)[1] for w in WORDS[:2])
    ta, tb = thumbnail(Frame(a, 0)), thumbnail(Frame(b, 0))
    t0 = time.perf_counter()
    for _ in range(n):
        thumbnail(Frame(a, 0))
    t1 = time.perf_counter()
    for _ in range(n):
        changed_pixels(ta, tb, 16)
    return 1e6 * (t1 - t0) / n, 1e6 * (time.perf_counter() - t1) / n


SEARCHES = (("kal", "accurate"), ("kal", "fast"), ("kal16", "accurate"), ("kal16", "fast"))
"""The speech-search rows: the benchmark's voice (8 kHz ``kal``, 16 kHz ``kal16``) and the
recognizer's search."""


async def speech_search(sessions: list[int], seconds: int = 20) -> None:
    """Workload 1 with speech, the recognizer's ``accurate`` search (the default) against
    ``fast``, with the 8 kHz voice and its 16 kHz twin, one server each, in one run: does the
    cheaper search buy talking sessions, and what does the speech's band cost?"""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for voice, search in SEARCHES:
        server = Server({"models": {"asr": {"engine": "pocketsphinx",
                                            "options": {"search": search}}}})
        try:
            await session(server.url, WORDS[:2], {w: jpeg_url(w) for w in WORDS[:2]}, None)
            rows[voice, search] = await words(server, sessions, seconds, voice=voice)
        finally:
            server.stop()
    lines = [f"| {voice} | {search} | {r['sessions']} | {r['words_min']:.0%} | "
             f"{r['lag_p95_s']:.2f} s | "
             f"{r['heard']} | {r['speech_lag_p95_s']:.1f} s | {r['server_cores']:.2f} | "
             f"{'yes' if r['words_min'] >= 0.95 and r['lag_p95_s'] <= 1.5 else 'no'} |"
             for (voice, search), found in rows.items() for r in found]
    write_block("capacity-search", f"""<!-- bench:capacity-search -->
### Talking sessions: the recognizer's `search`

Measured by `python -m benchmarks.capacity --speech-search` on {time.strftime('%Y-%m-%d')},
{machine()}: workload 1 (a new word a second and looping speech, every default handler), the
embedded default with `models.asr.options.search` `accurate` (the default) or `fast`, one
server each, {seconds} s per row. Voice: flite's `kal16` (16 kHz, full band as a microphone
gives: what the capacity table uses) or `kal` (the same voice at 8 kHz, telephone band,
upsampled to 24 kHz: what it used until 2026-12-05). The recognizer runs at its default
`nice` of 10. A row passes when every session reads >= 95% of its words
with lag p95 <= 1.5 s. Heard: utterances transcribed, all sessions together (looping speech
offers about 3 a session, each session starting at its own point of the loop), each
session waiting {SPEECH_WAIT_S} s after its stream for late
ones; speech lag: an utterance's end to its transcript's first words (not scored).

| voice | search | sessions | words read (worst session) | lag p95 | heard | speech lag p95 | server cores | passes |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(lines) + "\n<!-- /bench:capacity-search -->")


async def main() -> None:
    if sys.argv[1:2] == ["--speech-search"]:
        await speech_search([int(n) for n in sys.argv[2:]] or [8, 12])
        return
    saved = ROOT / "benchmarks" / "capacity.json"
    if sys.argv[1:] == ["--from-json"]:  # re-render the table of the last run
        results: dict[str, Any] = json.loads(saved.read_text())
        capacity_report.write(capacity_report.table(results, results["machine"]),
                              ROOT / "docs" / "performance.md")
        return
    results = {"load": os.getloadavg()[0], "machine": machine()}
    results["ocr_stock_ms"] = ocr_ms(BASELINE["models"]["ocr"]["options"])
    results["ocr_tuned_ms"] = ocr_ms({})
    results["gate_us"] = gate_us()
    print({k: v for k, v in results.items()}, flush=True)
    sessions = [1, 2, 4, 6, 8, 12, 16]
    results["baseline"] = await measure(BASELINE, sessions, 20, 32)
    results["default"] = await measure(None, sessions, 20, 32)
    text = capacity_report.table(results, results["machine"])
    print(text)
    capacity_report.write(text, ROOT / "docs" / "performance.md")
    saved.write_text(json.dumps(results, indent=1))
    print("written to docs/performance.md")


if __name__ == "__main__":
    asyncio.run(main())
