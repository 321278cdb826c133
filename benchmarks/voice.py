"""Speech out on the embedded default: flite's voices, measured.

(a) Synthesis: time to say a 1-sentence and a 3-sentence text (a flite subprocess per sentence,
    as ``agent.voice.speak`` runs it), the seconds of speech they make, and the real-time factor.
(b) Intelligibility: the project's own ASR (the ``speech`` handler's pocketsphinx model) hears
    each voice say a few sentences; word accuracy = 1 - word error rate.
(c) A real session: a realtime client asks for audio; a model streams two sentences, a word
    every 40 ms; from the moment the model wrote a sentence's last word to the client's first
    ``response.output_audio.delta`` of that sentence (gateway, websocket and flite included).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import websockets

from agent import ModelConfig, ThreadedEngine, Voice, hookimpl
from agent.config import Config, ProfileConfig
from agent.engine import ModelRequest
from agent.media import AUDIO_RATE
from agent.plugins import collect, get_plugin_manager
from agent.runtime import Runtime
from agent.testing import EchoHandler
from agent.uvicorn_server import running
from agent.voice import Speech, render
from benchmarks.docs import write_block
from benchmarks.run import machine
from plugins import flite
from plugins.speech import _decode

ONE = "The quick brown fox jumps over the lazy dog."
THREE = ("I can see a red car parked next to the house. There is a man reading a newspaper "
         "on the bench. The sign above the door says open until nine.")
HEARD = [
    "The quick brown fox jumps over the lazy dog.",
    "I can see a red car parked next to the house.",
    "There is a man reading a newspaper on the bench.",
    "The sign above the door says open until nine.",
    "Please turn left at the next street.",
    "It is going to rain this afternoon.",
    "She bought three apples and a loaf of bread.",
    "We will meet again tomorrow morning at the station.",
]
ROUNDS = 20
ANSWER = ("The door is open and the light is on. I can see two people talking near the "
          "window. ")
WORD_S = 0.04


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def accuracy(said: str, heard: list[str]) -> float:
    """1 - word error rate (edit distance over the words said), at least 0."""
    ref = words(said)
    row = list(range(len(heard) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(heard, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return max(0.0, 1 - row[-1] / len(ref))


def synthesis(voice: Voice) -> dict[str, float]:
    speech = Speech(voice, on=True, rate=AUDIO_RATE)
    out: dict[str, float] = {}
    for label, text in (("one", ONE), ("three", THREE)):
        sentences = re.findall(r"[^.]+\.", text)
        times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            pcm = b"".join(render(s, speech) for s in sentences)
            times.append(time.perf_counter() - start)
        out[f"{label}_ms"] = statistics.median(times) * 1000
        out[f"{label}_audio_s"] = len(pcm) / 2 / AUDIO_RATE
    out["rtf"] = out["three_ms"] / 1000 / out["three_audio_s"]
    heard = [accuracy(s, _decode(render(s, speech))) for s in HEARD]
    out["accuracy"] = statistics.mean(heard)
    return out


class Sentences(ThreadedEngine):
    """Streams ``ANSWER`` a word every ``WORD_S``, noting when each sentence's last word went."""

    kind = "sentences"
    ended: list[float] = []

    def generate(self, request: ModelRequest, cancelled: threading.Event) -> Iterator[str]:
        for word in re.findall(r"\S+\s*", ANSWER):
            time.sleep(WORD_S)
            if word.rstrip().endswith("."):
                self.ended.append(time.perf_counter())
            yield word


class Plugin:
    @hookimpl
    def register_engines(self, register: Any) -> None:
        register(Sentences)

    @hookimpl
    def register_models(self, register: Any) -> None:
        register("fake", ModelConfig(engine="sentences"))

    @hookimpl
    def register_handlers(self, register: Any) -> None:
        register(EchoHandler)


async def in_session(rounds: int = 20) -> list[float]:
    """Sentence end (the model) -> its first audio delta (the client), in ms."""
    config = Config(profiles={"default": ProfileConfig(handlers=["echo"])})
    runtime = Runtime.build(config, get_plugin_manager([Plugin(), flite]))
    lags: list[float] = []
    async with running(runtime) as address, websockets.connect(
            f"{address.ws}/v1/realtime?model=default", max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"]}}))
        for _ in range(rounds):
            Sentences.ended.clear()
            await ws.send(json.dumps({"type": "response.create"}))
            firsts: list[float] = []
            audio_at = 0.0
            while (event := json.loads(await ws.recv()))["type"] != "response.done":
                if event["type"] == "response.output_audio.delta":
                    audio_at = time.perf_counter()
                elif event["type"] == "response.output_audio_transcript.delta":
                    firsts.append(audio_at)  # a sentence's words follow its first audio delta
            lags += [(f - e) * 1000 for f, e in zip(firsts, Sentences.ended, strict=True)]
    return lags


def section(voices: dict[tuple[str, str], dict[str, float]], lags: list[float],
            load: float) -> str:
    rows = [f"| {f'`{name}`' if name else 'not registered'} ({flite_voice}) | "
            f"{r['one_ms']:.1f} ms ({r['one_audio_s']:.1f} s) | "
            f"{r['three_ms']:.1f} ms ({r['three_audio_s']:.1f} s) | {r['rtf']:.3f} | "
            f"{r['accuracy']:.0%} |" for (name, flite_voice), r in voices.items()]
    p50, p95 = np.percentile(lags, [50, 95])
    return f"""<!-- bench:voice -->
## Speech out: flite's voices

Measured by `make bench` (`python -m benchmarks.voice`) on {time.strftime('%Y-%m-%d')},
{machine()}, load average {load:.1f} at the start. Debian's flite 2.2 runs once per
sentence, as `agent.voice.speak` runs it (a subprocess writing WAV to its stdout, then soxr to
the output rate); median of {ROUNDS} rounds. The default, `flite`, is the fastest voice and
the one the project's ASR hears best.

| voice | 1 sentence: time (speech) | 3 sentences: time (speech) | real-time factor | words the project's ASR hears back |
|---|---|---|---|---|
{chr(10).join(rows)}

Words heard back: pocketsphinx (the `speech` handler's model) decoding each voice saying
{len(HEARD)} short sentences; accuracy is 1 - word error rate. In a real session (gateway,
websocket client on loopback, `output_modalities: ["audio"]`, the default voice), a model
writing two sentences a word every {WORD_S * 1000:.0f} ms: from the model's last word of a
sentence to that sentence's first audio delta at the client, **p50 {p50:.0f} ms, p95
{p95:.0f} ms** ({len(lags)} sentences).
<!-- /bench:voice -->"""


async def main() -> None:
    load = os.getloadavg()[0]
    voices = collect(get_plugin_manager([flite])).voices
    results = {(name, getattr(v, "voice", name)): synthesis(v) for name, v in voices.items()}
    results[("", "kal")] = synthesis(flite.FliteVoice("kal", "kal"))  # 8 kHz: heard worst
    for key, r in results.items():
        print(key, {k: round(x, 3) for k, x in r.items()}, flush=True)
    lags = await in_session()
    print("sentence end -> first audio delta (ms):", [round(x) for x in lags], flush=True)
    write_block("voice", section(results, lags, load))


if __name__ == "__main__":
    asyncio.run(main())
