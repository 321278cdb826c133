"""The gateway's event-loop lag with the VAD fed on the event loop and off it, in one run.

N live sessions stream speech (flite, 24 kHz PCM16 in 100 ms chunks, real time) to the
``speech`` handler of the embedded default and read every event the server sends. The server
runs in its own process, once with the VAD fed on the event loop (``feed_off_loop = False``,
as the handlers did before) and once off it. The loop's lag is the overshoot of a 100 ms timer
(``agent.looplag``), read from ``/healthz`` after the streams (p95 and worst of the last
minute), and each session's transcripts are counted, so both runs are seen doing the work.

    python -m benchmarks.loop_lag [--sessions 8] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soxr
import websockets

SENTENCE = "hello world. this is a test of speech recognition. the quick brown fox jumps."
STEP = 4800  # 100 ms of 24 kHz PCM16


async def serve(on_loop: bool) -> None:
    from agent.config import Config, ServerConfig
    from agent.plugins import get_plugin_manager
    from agent.runtime import Runtime
    from agent.uvicorn_server import running
    from plugins.speech import SpeechHandler

    SpeechHandler.feed_off_loop = not on_loop
    config = Config(server=ServerConfig(max_sessions=1000))
    runtime = Runtime.build(config, get_plugin_manager())
    async with running(runtime) as address:
        print(f"PORT {address.port}", flush=True)
        await asyncio.Event().wait()


def speech_pcm() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["flite", "-t", SENTENCE, "-o", str(wav)], check=True)
        raw = np.frombuffer(wav.read_bytes()[44:], "<i2").astype(np.float32) / 32768
    silence = np.zeros(8000, np.float32)  # a pause ends each utterance
    audio = soxr.resample(np.concatenate([raw, silence]), 8000, 24000)
    return bytes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


async def stream(url: str, pcm: bytes, seconds: float) -> int:
    """Stream ``seconds`` of speech in real time; return how many transcripts came back."""
    transcripts = 0
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:

        async def read() -> None:
            nonlocal transcripts
            async for message in ws:
                if '"response.done"' in str(message):
                    transcripts += 1

        reader = asyncio.create_task(read())
        await ws.send(json.dumps({"type": "session.update", "session": {
            "streamagent": {"live": True, "handlers": ["speech"]}}}))
        loop = asyncio.get_running_loop()
        looped = pcm * 2
        began, sent = loop.time(), 0
        while loop.time() - began < seconds:
            start = sent % len(pcm)
            chunk = looped[start:start + STEP]
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(chunk).decode()}))
            sent += STEP
            await asyncio.sleep(max(0.0, began + sent / 48000 - loop.time()))
        await asyncio.sleep(2)  # the last windows are answered
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return transcripts


async def drive(port: int, sessions: int, seconds: float, pcm: bytes) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=default"
    async with asyncio.timeout(seconds + 60):
        counts = await asyncio.gather(*(stream(url, pcm, seconds) for _ in range(sessions)))
        async with httpx.AsyncClient(timeout=10) as http:
            health = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
    return {"transcripts": sum(counts), **{f"lag_{k}_ms": v
                                            for k, v in health["loop_lag_ms"].items()}}


def measure(on_loop: bool, sessions: int, seconds: float, pcm: bytes) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks.loop_lag", "--serve"] + (["--on-loop"] * on_loop)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the server did not start: {line!r}")
        figures = asyncio.run(drive(int(line.split()[1]), sessions, seconds, pcm))
        return {"vad": "on the loop" if on_loop else "off the loop", "sessions": sessions,
                "seconds": seconds, **figures}
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="live speech sessions")
    parser.add_argument("--seconds", type=float, default=30, help="seconds of speech each")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--on-loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.on_loop))
        return
    pcm = speech_pcm()
    rows = [measure(on_loop, args.sessions, args.seconds, pcm) for on_loop in (True, False)]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
