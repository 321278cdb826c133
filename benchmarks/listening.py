"""Listening: where the CPU goes per second of audio, stage by stage, before and after.

The capacity benchmark's speech (flite saying its sentence, then 2 s of silence, looped, 24 kHz,
100 ms ``input_audio_buffer.append`` events) through the server's own code in this process,
each stage timed with ``time.process_time`` (CPU, so less sensitive to a busy machine than
wall time), ``--rounds`` times (min and max reported):

- the event loop: each event's JSON parsed, its base64 decoded, PCM16 to float;
- resampling 24 -> 16 kHz (``AudioConverter``, soxr streamed);
- the VAD: silero on every 32 ms, one segmenter; and a session with two listeners (the speech
  handler and server-VAD turn detection), each with its own model pass (before) or sharing one
  (``Segmenter(stream=...)``, after);
- the recognizer: pocketsphinx on each utterance, whole (before: stock settings, the utterance
  with the silence that ended it) or voiced (after: ``plugins.speech.DECODER``,
  ``Utterance.voiced``); and, to tell the two apart, stock settings on the voiced utterance.

Word accuracy (1 - WER) of both recognizer settings on the benchmark's sentence, on flite's
voices saying benchmarks/voice.py's sentences, and with ``--testdata DIR`` on the human
recordings of Debian's pocketsphinx-testdata (``apt-get download pocketsphinx-testdata``,
``dpkg -x``; DIR holds ``librivox/`` and ``cards/``). Written to docs/performance.md
(``bench:listening``).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from agent import turns
from agent.audio import AudioConverter, pcm16_to_float
from agent.media import AUDIO_RATE, b64decode
from agent.vad import Segmenter, Utterance, load_vad
from benchmarks.capacity import SENTENCE, speech_chunks
from benchmarks.docs import write_block
from benchmarks.run import machine
from benchmarks.voice import HEARD, accuracy
from plugins.speech import DECODER

VOICES = ("kal", "kal16", "slt", "rms", "awb")
SIDES: dict[str, tuple[dict[str, Any], bool]] = {
    "before": ({}, False), "voiced, stock": ({}, True), "after": (DECODER, True)}
"""Each side's pocketsphinx settings, and whether it hears ``Utterance.voiced``."""


def cpu(stage: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.process_time()
    out = stage()
    return time.process_time() - t0, out


def windows(audio: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """1 s windows; as in a session, every listener gets the same window objects."""
    return [(lo / AUDIO_RATE, audio[lo:lo + AUDIO_RATE]) for lo in range(0, audio.size, AUDIO_RATE)]


def segment(audio: np.ndarray, listeners: int = 1, stream: str = "",
            semantic: bool = False) -> list[Utterance]:
    """``semantic``: with the end-of-turn model, as ``semantic_vad`` (longest pause 4 s)."""
    segs = [Segmenter(stream=stream, min_silence_s=4.0, turn_over=turns.turn_over) if semantic
            else Segmenter(stream=stream) for _ in range(listeners)]
    ws = windows(audio)
    found = [[u for t, w in ws for u in seg.feed(w, t)] for seg in segs]
    return found[0]


def decoder(config: dict[str, Any]) -> Any:
    from pocketsphinx import Decoder

    return Decoder(samprate=AUDIO_RATE, loglevel="FATAL", **config)


def recognize(dec: Any, audio: np.ndarray) -> list[str]:
    dec.start_utt()
    dec.process_raw((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes(), False, False)
    dec.end_utt()
    hyp = dec.hyp()
    return hyp.hypstr.split() if hyp is not None else []


def stages(events: list[str]) -> dict[str, float]:
    """CPU seconds of each stage over ``events``."""
    out: dict[str, float] = {}
    out["loop"], floats = cpu(lambda: [pcm16_to_float(b64decode(json.loads(e)["audio"], "audio"))
                                       for e in events])
    conv = AudioConverter(24000)
    out["resample"], parts = cpu(lambda: [conv._stream.resample_chunk(x)  # type: ignore[union-attr]
                                          for x in floats])
    audio = np.concatenate(parts)
    out["vad"], utts = cpu(lambda: segment(audio))
    out["vad, 2 listeners before"], _ = cpu(lambda: segment(audio, listeners=2))
    out["vad, 2 listeners after"], _ = cpu(lambda: segment(audio, 2, f"s{time.monotonic()}"))
    out["vad, semantic"], _ = cpu(lambda: segment(audio, semantic=True))
    for side, (config, voiced) in SIDES.items():
        dec, heard = decoder(config), [u.voiced if voiced else u.audio for u in utts]
        out[f"recognizer {side}"], _ = cpu(lambda d=dec, h=heard: [recognize(d, a) for a in h])
    return out


def costs(rounds: int, loops: int) -> dict[str, Any]:
    chunks = speech_chunks()
    events = [json.dumps({"type": "input_audio_buffer.append", "audio": c})
              for c in chunks * loops]
    seconds = len(events) / 10
    runs = [stages(events) for _ in range(rounds)]
    return {"audio_s": seconds, "ms_per_s": {
        k: (1000 * min(r[k] for r in runs) / seconds, 1000 * max(r[k] for r in runs) / seconds)
        for k in runs[0]}}


def flite(text: str, voice: str) -> tuple[np.ndarray, int]:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
        return read(path)


def read(path: Path) -> tuple[np.ndarray, int]:
    import wave

    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return pcm.astype(np.float32) / 32768, w.getframerate()


def corpus(testdata: Path | None) -> list[tuple[str, str, np.ndarray, int]]:
    items = [("benchmark sentence (flite kal)", SENTENCE, *flite(SENTENCE, "kal"))]
    items += [(f"flite {v}", s, *flite(s, v)) for v in VOICES for s in HEARD]
    if testdata is not None:
        for folder in ("librivox", "cards"):
            said = (testdata / folder / ("transcription" if folder == "librivox"
                                         else "cards.transcription")).read_text()
            for m in re.finditer(r"<s> (.*?)\s*</s> \((.*?)\)", said):
                items.append(("human (pocketsphinx-testdata)", m.group(1),
                              *read(testdata / folder / f"{m.group(2)}.wav")))
    return items


def accuracies(testdata: Path | None) -> dict[str, dict[str, float]]:
    """Word accuracy per kind of speech and side, each said through the VAD as live audio."""
    decs = {side: decoder(config) for side, (config, _) in SIDES.items()}
    tally: dict[str, dict[str, list[float]]] = {}
    for kind, text, audio, rate in corpus(testdata):
        quiet = np.zeros(AUDIO_RATE, np.float32)
        a16 = np.concatenate([quiet, soxr.resample(audio, rate, AUDIO_RATE), quiet, quiet])
        utts = segment(a16.astype(np.float32))
        n = len(re.findall(r"[a-z']+", text.lower()))
        for side, (_, voiced) in SIDES.items():
            heard = [w for u in utts for w in recognize(decs[side], u.voiced if voiced else u.audio)]
            got = tally.setdefault(kind, {}).setdefault(side, [0.0, 0.0])
            got[0] += accuracy(text, heard) * n
            got[1] += n
    total = {side: [sum(t[side][i] for t in tally.values()) for i in (0, 1)] for side in SIDES}
    return {kind: {side: a / n for side, (a, n) in sides.items()}
            for kind, sides in [*tally.items(), ("all of the above", total)]}


def table(res: dict[str, Any]) -> str:
    ms = res["costs"]["ms_per_s"]
    span = "{:.1f} ({:.1f}-{:.1f})".format
    lines = [f"Measured by `python -m benchmarks.listening` on {time.strftime('%Y-%m-%d')}, "
             f"{res['machine']}, {res['rounds']} rounds over {res['costs']['audio_s']:.0f} s of "
             "the capacity benchmark's speech (flite `kal16`; 4.5 s said, 2 s silent, looped). "
             "CPU ms per "
             "second of audio, min (min-max); per session, 1 ms/s is 0.001 cores.", "",
             "| stage | before | after |", "|---|---|---|"]
    for stage, b, a in (("event loop: JSON, base64, PCM16 to float", "loop", "loop"),
                        ("resampling 24 -> 16 kHz", "resample", "resample"),
                        ("VAD, one listener", "vad", "vad"),
                        ("VAD, two listeners (speech handler + server VAD)",
                         "vad, 2 listeners before", "vad, 2 listeners after"),
                        ("VAD and end-of-turn model (`semantic_vad`), one listener", "",
                         "vad, semantic"),
                        ("recognizer (pocketsphinx)", "recognizer before",
                         "recognizer after"),
                        ("recognizer, stock settings on the voiced utterance",
                         "recognizer voiced, stock", "recognizer voiced, stock")):
        before = span(ms[b][0], *ms[b]) if b else "-"
        lines.append(f"| {stage} | {before} | {span(ms[a][0], *ms[a])} |")
    lines += ["", f"The end-of-turn model (Smart Turn v3.2) takes {res['turn_ms']:.0f} ms a call "
              "(median of 20, one thread); `semantic_vad` calls it once per pause of "
              f"{turns.PAUSE_S:g} s after speech.",
              "", "Word accuracy (1 - WER), each clip through the VAD as live audio:", "",
              "| speech | before | voiced, stock settings | after |", "|---|---|---|---|"]
    for kind, sides in res["accuracy"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{100 * sides[side]:.1f}%" for side in SIDES)
                     + " |")
    return "\n".join(lines)


def turn_ms(calls: int = 20) -> float:
    """The end-of-turn model's wall time per call (ms, median), on 3 s of speech."""
    audio, rate = flite(SENTENCE, "kal")
    speech = soxr.resample(audio, rate, AUDIO_RATE).astype(np.float32)[:3 * AUDIO_RATE]
    turns.finished(speech)  # loaded
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        turns.finished(speech)
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.listening", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loops", type=int, default=5, help="times the speech loops")
    parser.add_argument("--testdata", type=Path, help="unpacked pocketsphinx-testdata's data")
    parser.add_argument("--no-write", action="store_true", help="leave docs/performance.md")
    args = parser.parse_args()
    load_vad()
    res = {"machine": machine(), "rounds": args.rounds,
           "costs": costs(args.rounds, args.loops), "accuracy": accuracies(args.testdata),
           "turn_ms": turn_ms()}
    text = table(res)
    print(text)
    if not args.no_write:
        write_block("listening", f"<!-- bench:listening -->\n{text}\n<!-- /bench:listening -->")


if __name__ == "__main__":
    main()
