"""``streamagent stream FILE``: decode a media file with PyAV and stream it to a server at
real-time pace (or ``speed`` times that), as frames and audio with media timestamps."""

from __future__ import annotations

import asyncio
import base64
import heapq
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import websockets

log = logging.getLogger(__name__)
AUDIO_CHUNK_S = 0.1
REORDER_S = 0.5
SEND_RATE = 16000
EXPECT_QUIET_S = 1.0
"""With ``expect``: how long nothing more may come once the responses expected have."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One finished response, as the server labelled it."""

    handler: str
    start_ms: int | None
    end_ms: int | None
    text: str
    status: str
    metadata: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        span = ""
        if self.start_ms is not None and self.end_ms is not None:
            span = f"[{_clock(self.start_ms)}-{_clock(self.end_ms)}] "
        flag = "" if self.status == "completed" else f" ({self.status})"
        # a watch's firing names the watch itself: 'watch "exit": text "EXIT" in view'
        label = "" if "streamagent_watch" in self.metadata else f"{self.handler}: "
        return f"{span}{label}{self.text}{flag}"


@dataclass
class StreamStats:
    frames: int = 0
    audio_s: float = 0.0
    bad_packets: int = 0
    errors: list[str] = field(default_factory=list)


def _clock(ms: int) -> str:
    return f"{ms // 60000:02d}:{ms % 60000 / 1000:06.3f}"


Item = tuple[float, dict[str, Any]]


def media_items(path: str, send_fps: float, stats: StreamStats) -> Iterator[Item]:
    """(media time, client event) pairs in time order. Bad packets are counted and skipped.

    Containers interleave audio and video loosely (an audio packet may come before an earlier
    video frame), so items are re-ordered through a small look-ahead heap: a server closes a
    window as soon as a later item arrives, and a late frame would land in the next window."""
    heap: list[tuple[float, int, dict[str, Any]]] = []
    for n, (t, event) in enumerate(_decoded(path, send_fps, stats)):
        heapq.heappush(heap, (t, n, event))
        while heap and heap[0][0] <= t - REORDER_S:
            first, _, item = heapq.heappop(heap)
            yield first, item
    while heap:
        first, _, item = heapq.heappop(heap)
        yield first, item


def _decoded(path: str, send_fps: float, stats: StreamStats) -> Iterator[Item]:
    with av.open(path) as container:
        streams = [s for s in container.streams if s.type in ("video", "audio")]
        if not streams:
            raise ValueError(f"{path} has no audio or video stream")
        t0 = min((float(s.start_time * s.time_base) for s in streams
                  if s.start_time is not None and s.time_base is not None), default=0.0)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SEND_RATE)
        next_frame_t = 0.0
        audio_t: float | None = None  # resampled audio is timed by its sample count
        for packet in container.demux(streams):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                stats.bad_packets += 1
                log.warning("skipping a bad %s packet: %s", packet.stream.type, exc)
                continue
            for frame in frames:
                if not isinstance(frame, (av.VideoFrame, av.AudioFrame)) or frame.time is None:
                    continue
                t = max(0.0, frame.time - t0)
                if isinstance(frame, av.VideoFrame):
                    if t + 1e-6 < next_frame_t:
                        continue
                    next_frame_t = t + 1.0 / send_fps
                    stats.frames += 1
                    yield t, _image_event(frame, t)
                else:
                    audio_t = audio_t if audio_t is not None else t
                    for out in resampler.resample(frame):
                        yield from _audio_events(out, audio_t, stats)
                        audio_t += out.samples / SEND_RATE
        for out in resampler.resample(None):  # what the resampler still holds
            if audio_t is not None:
                yield from _audio_events(out, audio_t, stats)
                audio_t += out.samples / SEND_RATE


def _image_event(frame: av.VideoFrame, t: float) -> dict[str, Any]:
    buf = io.BytesIO()
    frame.to_image().save(buf, format="JPEG", quality=85)  # type: ignore[no-untyped-call]
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    part = {"type": "input_image", "image_url": url, "streamagent": {"timestamp": round(t, 4)}}
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [part]}}


def _audio_events(frame: av.AudioFrame, t: float, stats: StreamStats) -> Iterator[Item]:
    pcm = frame.to_ndarray().astype("<i2").reshape(-1)
    step = int(SEND_RATE * AUDIO_CHUNK_S)
    for i in range(0, pcm.size, step):
        chunk = pcm[i:i + step]
        ts = t + i / SEND_RATE
        stats.audio_s += chunk.size / SEND_RATE
        yield ts, {"type": "input_audio_buffer.append",
                   "audio": base64.b64encode(chunk.tobytes()).decode(),
                   "streamagent": {"timestamp": round(ts, 4)}}


async def stream_file(
    path: str,
    url: str,
    *,
    speed: float = 1.0,
    send_fps: float = 10.0,
    sample_fps: float = 1.0,
    handlers: list[str] | None = None,
    api_key: str | None = None,
    idle_s: float = 3.0,
    on_reply: Callable[[Reply], None] = lambda r: None,
    watches: list[dict[str, Any]] | None = None,
    expect: int | None = None,
) -> tuple[list[Reply], StreamStats]:
    """Stream ``path`` in live mode; return every response, in the order they finished.
    ``watches``: the session's ``streamagent.watches`` (their firings are responses too).
    After the media, wait until nothing has come for ``idle_s``; with ``expect``, until that
    many responses have finished and nothing more came for ``EXPECT_QUIET_S`` (or, at most,
    nothing for ``idle_s``)."""
    stats, replies = StreamStats(), []
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        session: dict[str, Any] = {"type": "realtime", "audio": {"input": {"format": {
            "type": "audio/pcm", "rate": SEND_RATE}}},
            "streamagent": {"live": True, "sample_fps": sample_fps}}
        if handlers is not None:
            session["streamagent"]["handlers"] = handlers
        if watches is not None:
            session["streamagent"]["watches"] = watches
        await _configure(ws, session)
        state = {"open": 0, "last": time.monotonic()}

        async def receive() -> None:
            async for raw in ws:
                event = json.loads(raw)
                state["last"] = time.monotonic()
                kind = event.get("type")
                if kind == "response.created":
                    state["open"] += 1
                elif kind == "response.done":
                    state["open"] -= 1
                    reply = _reply(event["response"])
                    replies.append(reply)
                    on_reply(reply)
                elif kind == "error":
                    stats.errors.append(event["error"]["message"])
                    log.warning("server error: %s", event["error"]["message"])

        receiver = asyncio.create_task(receive())
        began, sent_audio = time.monotonic(), False
        for t, event in media_items(path, send_fps, stats):
            delay = began + t / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_audio |= event["type"] == "input_audio_buffer.append"
            await ws.send(json.dumps(event))
        if sent_audio:
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        state["last"] = time.monotonic()
        while state["open"] > 0 or time.monotonic() - state["last"] < idle_s:
            if receiver.done() or (
                    expect is not None and len(replies) >= expect and not state["open"]
                    and time.monotonic() - state["last"] >= EXPECT_QUIET_S):
                break
            await asyncio.sleep(0.05)
        receiver.cancel()
    return replies, stats


async def _configure(ws: websockets.ClientConnection, session: dict[str, Any],
                     timeout_s: float = 30.0) -> None:
    """Send ``session.update`` and wait for the server to take it; ``ValueError`` with the
    server's message when it refuses (a bad handler or watch: nothing to stream for)."""
    await ws.send(json.dumps({"type": "session.update", "session": session}))
    async with asyncio.timeout(timeout_s):
        async for raw in ws:
            event = json.loads(raw)
            if event.get("type") == "session.updated":
                return
            if event.get("type") == "error":
                raise ValueError(f"the server refused the session: {event['error']['message']}")
    raise ValueError("the server closed the connection before taking the session")


def _reply(response: dict[str, Any]) -> Reply:
    meta = response.get("metadata") or {}
    text = "".join(c.get("text", "") for item in response.get("output", [])
                   for c in item.get("content", []))
    start, end = meta.get("window_start_ms"), meta.get("window_end_ms")
    return Reply(meta.get("handler", "?"), int(start) if start else None,
                 int(end) if end else None, text, response.get("status", "?"), dict(meta))


