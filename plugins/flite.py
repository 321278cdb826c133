"""Voices from Debian's ``flite`` (CMU Flite, a BSD-style licence), the embedded default's speech
out: no download, voices compiled in, a sentence in a few milliseconds (docs/performance.md).

Each sentence runs ``flite`` once as a subprocess, which writes a WAV file to its stdout.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from typing import Any

from agent import AudioChunk, EngineError, Voice, hookimpl

TIMEOUT_S = 10.0
"""One sentence (at most ``MAX_SENTENCE_CHARS``) takes milliseconds; a hung flite is stopped."""


class FliteVoice(Voice):
    """One of flite's compiled-in voices (``flite -lv``): ``kal16``, ``slt``, ``rms``, ``awb``
    (16 kHz) or ``kal`` (8 kHz)."""

    def __init__(self, name: str, voice: str, description: str = "",
                 program: str = "flite") -> None:
        self.name = name
        self.voice = voice
        self.description = description
        self.program = program

    def synthesize(self, text: str, speed: float = 1.0) -> AudioChunk:
        binary = shutil.which(self.program)
        if binary is None:
            raise EngineError(f"{self.program} is not installed: `make setup` (Debian package "
                              "flite)")
        if not text:
            return AudioChunk(b"", 16000, text)
        command = [binary, "-voice", self.voice, "--setf", f"duration_stretch={1 / speed:.3f}",
                   "-t", text, "-o", "/dev/stdout"]
        try:
            done = subprocess.run(command, capture_output=True, timeout=TIMEOUT_S, check=True)
            with wave.open(io.BytesIO(done.stdout)) as wav:
                return AudioChunk(wav.readframes(wav.getnframes()), wav.getframerate(), text)
        except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as exc:
            raise EngineError(f"voice {self.name!r} (flite) failed: {exc}") from None


VOICES = (
    FliteVoice("flite", "kal16", "flite's kal16 (male, diphone, 16 kHz): the default"),
    FliteVoice("flite-slt", "slt", "flite's slt (female, 16 kHz)"),
    FliteVoice("flite-rms", "rms", "flite's rms (male, 16 kHz)"),
    FliteVoice("flite-awb", "awb", "flite's awb (male, Scottish English, 16 kHz)"),
)


@hookimpl
def register_voices(register: Any) -> None:
    for voice in VOICES:
        register(voice)
