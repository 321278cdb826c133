"""Do Pipecat, LiveKit and google-genai hear the embedded default speak? A check for a user
who has those client libraries: not part of ``make test`` (they are not streamagent's
dependencies). Install them in a virtual env of their own, then run this from streamagent's:

    python3.11 -m venv /tmp/clients
    /tmp/clients/bin/pip install 'pipecat-ai[openai]' 'livekit-agents[openai]' google-genai
    .venv/bin/python -m scripts.check_clients_audio --python /tmp/clients/bin/python

It serves the embedded default on a free port (Gemini Live through a TLS relay with a
certificate made here, as the SDK only speaks TLS), runs each client in the clients' env
(``scripts/clients_audio_drivers.py``: a camera frame with a word on it, then a question, in
text or spoken with flite), takes the PCM each library hands to its app and recognises it
with the project's own ASR (the ``asr`` model's pocketsphinx). Per client it prints the
words heard back beside the answer text; it exits 1 when a client heard fewer than half the
answer's words.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import wave
from pathlib import Path
from types import TracebackType

from agent.config import Config
from agent.media import AUDIO_RATE
from agent.plugins import get_plugin_manager
from agent.runtime import Runtime
from agent.testing import ServerThread, jpeg_bytes
from agent.voice import resample
from plugins import flite
from plugins.speech import _decode

CLIENTS = ("pipecat-text", "pipecat-voice", "livekit-text", "livekit-voice", "genai-text",
           "genai-voice")
DRIVERS = Path(__file__).with_name("clients_audio_drivers.py")
WORD = "HELLO"


class TlsRelay:
    """``wss://127.0.0.1:PORT`` in front of the server's plain port, with a self-signed
    certificate (google-genai's live client only connects with TLS)."""

    def __init__(self, upstream: int, cert: str, key: str) -> None:
        self.upstream, self.port = upstream, 0
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> int:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self.port

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=self.context)
        self.port = server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def certificate(folder: Path) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl makes the relay's certificate"
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def inputs(folder: Path) -> tuple[str, str]:
    """The camera frame (a word on it) and the spoken question (flite, 16 kHz)."""
    image = folder / "frame.jpg"
    image.write_bytes(jpeg_bytes(WORD, size=(400, 200)))
    said = flite.VOICES[0].synthesize("What is written?")
    question = folder / "question.wav"
    with wave.open(str(question), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(said.rate)
        w.writeframes(said.pcm16)
    return str(image), str(question)


def drive(python: str, client: str, port: int, files: tuple[str, str], out: Path,
          ca: str) -> dict[str, object]:
    """One client in the clients' env: its RESULT line, and the words heard in its audio."""
    run = subprocess.run([python, str(DRIVERS), client, str(port), *files, str(out), ca],
                         capture_output=True, text=True, timeout=240)
    line = next((s for s in run.stdout.splitlines() if s.startswith("RESULT ")), None)
    if line is None:
        return {"text": "", "errors": [run.stderr.strip()[-2000:] or f"exit {run.returncode}"],
                "heard": [], "seconds": 0.0, "rate": 0}
    result: dict[str, object] = json.loads(line[len("RESULT "):])
    with wave.open(str(out)) as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    result["heard"] = [w.lower() for w in _decode(resample(pcm, rate, AUDIO_RATE))] if pcm else []
    return result


def report(client: str, result: dict[str, object]) -> bool:
    said = set(words(str(result["text"])))
    heard = list(map(str, result["heard"]))  # type: ignore[call-overload]
    share = len(said & set(heard)) / len(said) if said else 0.0
    ok = share >= 0.5 and not result["errors"]
    print(f"{client:14} {'ok  ' if ok else 'FAIL'} {result['seconds']:.1f} s at "
          f"{result['rate']} Hz; answer words heard back: {share:.0%}")
    print(f"{'':14} answer: {str(result['text'])!r}")
    print(f"{'':14} heard:  {' '.join(heard)!r}")
    for error in result["errors"]:  # type: ignore[attr-defined]
        print(f"{'':14} error:  {error}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="the Python of the env with the client libraries")
    parser.add_argument("clients", nargs="*", help=f"some of {', '.join(CLIENTS)} (all)")
    args = parser.parse_args()
    unknown = set(args.clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients {sorted(unknown)}; choose from {', '.join(CLIENTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files, (cert, key) = inputs(folder), certificate(folder)
        runtime = Runtime.build(Config(), get_plugin_manager())
        with ServerThread(runtime) as address, TlsRelay(address.port, cert, key) as tls:
            oks = [report(client, drive(
                args.python, client, tls if client.startswith("genai") else address.port,
                files, folder / f"{client}.wav", cert)) for client in args.clients or CLIENTS]
    return 0 if all(oks) else 1


if __name__ == "__main__":
    sys.exit(main())
