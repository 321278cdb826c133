"""Real media made at test time: videos of words (PyAV) and speech (flite)."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agent.testing import FONT
from tests.conftest import need

CONTAINERS = {
    "mp4": ("libx264", "yuv420p", "aac", "fltp"),
    "webm": ("libvpx", "yuv420p", "libopus", "s16"),
    "avi": ("mjpeg", "yuvj420p", "pcm_s16le", "s16"),
}


def word_frame(word: str, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, 72)
    box = draw.textbbox((0, 0), word, font=font)
    xy = ((size[0] - (box[2] - box[0])) // 2, (size[1] - (box[3] - box[1])) // 2)
    draw.text(xy, word, fill="black", font=font)
    return np.asarray(img)


def word_video(path: Path, words: list[str], fps: int = 10, speech: np.ndarray | None = None,
               audio_rate: int = 48000) -> Path:
    """One word per second of video; audio is ``speech`` (float32 at ``audio_rate``) or a hum."""
    vcodec, pix_fmt, acodec, sample_fmt = CONTAINERS[path.suffix[1:]]
    seconds = len(words)
    if speech is None:
        t = np.arange(seconds * audio_rate) / audio_rate
        speech = (0.05 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    with av.open(str(path), "w") as out:
        video = out.add_stream(vcodec, rate=fps)
        video.width, video.height, video.pix_fmt = 640, 480, pix_fmt
        audio = out.add_stream(acodec, rate=audio_rate)
        audio.layout = "mono"
        frames = [word_frame(w) for w in words]
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(frames[i // fps], format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        _encode_audio(out, audio, speech, audio_rate, sample_fmt)
    return path


def _encode_audio(out: av.container.OutputContainer, stream: av.audio.AudioStream,
                  samples: np.ndarray, rate: int, sample_fmt: str) -> None:
    step = stream.codec_context.frame_size or 1024
    for start in range(0, samples.size, step):
        chunk = samples[start:start + step]
        if sample_fmt == "s16":
            data = (chunk * 32767).astype(np.int16).reshape(1, -1)
        else:
            data = chunk.astype(np.float32).reshape(1, -1)
        if data.shape[1] < step and stream.codec_context.frame_size:
            data = np.pad(data, ((0, 0), (0, step - data.shape[1])))
        frame = av.AudioFrame.from_ndarray(data, format=sample_fmt, layout="mono")
        frame.sample_rate, frame.pts = rate, start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def flite_wav(path: Path, text: str, voice: str = "kal") -> Path:
    """``text`` said by flite's ``voice`` (``kal``: 8 kHz; ``kal16``, ``slt``: 16 kHz)."""
    subprocess.run([need("flite"), "-voice", voice, "-t", text, "-o", str(path)], check=True)
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as f:
        rate = f.streams.audio[0].rate
        data = np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(audio=0)])
    return (data.astype(np.float32) / 32768.0 if data.dtype == np.int16 else data), rate
