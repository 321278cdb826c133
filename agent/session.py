"""One OpenAI Realtime session per websocket: client events in, server events out.

The only place that maps errors to the wire. Per-message problems become ``error`` events and
the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agent import events, protocol
from agent.audio import AudioConverter
from agent.engine import Turn
from agent.errors import (
    InvalidMedia,
    InvalidRequest,
    NoActiveResponse,
    RateLimited,
    StreamAgentError,
)
from agent.handler import Handler, Question
from agent.live import LiveMedia
from agent.media import Frame, b64decode, sniff_image, split_data_url
from agent.responses import ResponseRun
from agent.runtime import Runtime

log = logging.getLogger(__name__)
SendText = Callable[[str], Awaitable[None]]
OUTBOX_SIZE = 256


class RealtimeSession:
    def __init__(self, runtime: Runtime, model: str, send_text: SendText) -> None:
        self.runtime = runtime
        self.model = model
        self.profile = runtime.profile(model)
        self.id = events.new_id("sess")
        self.send_text = send_text
        self.instructions = self.profile.instructions
        self.audio_rate = 24000
        self.converter = AudioConverter(self.audio_rate)
        self.history: deque[Turn] = deque(maxlen=runtime.config.server.max_history)
        self.pending_text: list[str] = []
        self.responses: dict[str, ResponseRun] = {}
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(OUTBOX_SIZE)
        self.media = LiveMedia(runtime, self.id, self._live_response, profile=self.profile)
        self.media.live = self.profile.live
        self._fps_limit = runtime.config.server.max_frames_per_s
        self._tokens, self._token_t = self._fps_limit, time.monotonic()
        self._audio_pending = False
        self.frames_refused = 0

    async def send(self, event: dict[str, Any]) -> None:
        await self.outbox.put(event)

    async def run(self, messages: AsyncIterator[str | bytes]) -> None:
        """Serve until the client goes away; cancels everything this session started."""
        writer = asyncio.create_task(self._write(), name=f"writer-{self.id}")
        self.media.start()
        self.media.set_handlers(self.runtime.default_handlers(self.profile))
        try:
            await self.send(events.event("session.created", session=self._session_object()))
            async for message in messages:
                await self.handle(message)
        finally:
            for run in list(self.responses.values()):
                if run.task is not None:
                    run.task.cancel()
            await self.media.close()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            st = self.media.sampler.stats
            log.info("session %s closed: %d frames, %d dropped before decoding, %d windows, "
                     "%d dropped by busy handlers", self.id, st.frames, st.frames_dropped,
                     st.windows, self.media.handlers_dropped)

    async def _write(self) -> None:
        while True:
            event = await self.outbox.get()
            await self.send_text(json.dumps(event))

    async def handle(self, message: str | bytes) -> None:
        event_id = None
        try:
            if isinstance(message, bytes):
                raise InvalidRequest("binary messages are not supported: send JSON text")
            event = protocol.parse_event(message)
            event_id = event.event_id
            await self.dispatch(event)
        except StreamAgentError as exc:
            await self.send(events.error(exc, event_id))

    async def dispatch(self, event: protocol.ClientEvent) -> None:
        if isinstance(event, protocol.SessionUpdate):
            self._update(event.session)
            await self.send(events.event("session.updated", session=self._session_object()))
        elif isinstance(event, protocol.AudioAppend):
            ts = event.streamagent.timestamp if event.streamagent else None
            self.media.add_audio(self.converter(event.audio), ts)
            self._audio_pending = True
        elif isinstance(event, protocol.AudioCommit):
            self.media.flush()
            self._audio_pending = False
            await self.send(events.event("input_audio_buffer.committed",
                                         item_id=events.new_id("item"), previous_item_id=None))
        elif isinstance(event, protocol.AudioClear):
            self.converter = AudioConverter(self.audio_rate)
            await self.send(events.event("input_audio_buffer.cleared"))
        elif isinstance(event, protocol.ItemCreate):
            await self._add_item(event)
        elif isinstance(event, protocol.ResponseCreate):
            self._ask(event.response)
        elif isinstance(event, protocol.ResponseCancel):
            self._cancel(event.response_id)

    def _update(self, params: protocol.SessionParams) -> None:
        ext = params.streamagent
        if ext is not None and ext.handlers is not None:
            if problem := self.runtime.modality_problem(ext.handlers, self.profile):
                raise InvalidRequest(problem, param="session.streamagent.handlers")
            usable = self.runtime.usable_handlers(self.profile)
            unknown = [h for h in ext.handlers if h not in usable]
            if unknown:
                raise InvalidRequest(
                    f"unknown handlers {unknown} (or no model for them in this profile); "
                    f"available: {usable}", param="session.streamagent.handlers")
        fmt = params.audio.input.format if params.audio and params.audio.input else None
        if fmt is not None:
            if fmt.type not in ("audio/pcm", "pcm16"):
                raise InvalidMedia(f"unsupported audio format {fmt.type!r}; use audio/pcm",
                                   param="session.audio.input.format.type")
            self.converter = AudioConverter(fmt.rate)
            self.audio_rate = fmt.rate
        if params.instructions is not None:
            self.instructions = params.instructions
        if ext is None:
            return
        if ext.live is not None:
            self.media.live = ext.live
        if ext.sample_fps is not None:
            self.media.set_fps(ext.sample_fps)
        if ext.video_window_s is not None:
            self.media.set_video_window(ext.video_window_s)
        if ext.handlers is not None:
            self.media.set_handlers(ext.handlers)

    def _session_object(self) -> dict[str, Any]:
        return events.session_object(self.id, self.model, {
            "instructions": self.instructions,
            "output_modalities": ["text"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.audio_rate}}},
            "streamagent": {
                "live": self.media.live,
                "sample_fps": 1.0 / self.media.sampler.window_s,
                "handlers": self.media.handler_names,
                "video_window_s": self.media.video_window_s,
                "available_handlers": self.runtime.usable_handlers(self.profile),
            },
        })

    async def _add_item(self, event: protocol.ItemCreate) -> None:
        item = event.item
        for part in item.content:
            if isinstance(part, protocol.InputText):
                if item.role == "system":
                    self.instructions = part.text
                elif item.role == "user":  # joins the history when it is asked
                    self.pending_text.append(part.text)
                else:
                    self.history.append(Turn(item.role, part.text))
            elif isinstance(part, protocol.InputImage):
                self._add_image(part)
            elif part.audio is not None:
                self.media.add_audio(self.converter(part.audio), None)
                self.media.flush()
        item_id = item.id or events.new_id("item")
        wire = {"id": item_id, "object": "realtime.item", "type": "message", "role": item.role,
                "status": "completed", "content": [p.model_dump(exclude_none=True)
                                                   for p in item.content
                                                   if not isinstance(p, protocol.InputImage)]}
        prev = event.previous_item_id
        await self.send(events.event("conversation.item.added", previous_item_id=prev, item=wire))
        await self.send(events.event("conversation.item.done", previous_item_id=prev, item=wire))

    def _add_image(self, part: protocol.InputImage) -> None:
        if not self._take_token():
            self.frames_refused += 1
            raise RateLimited(f"more than {self._fps_limit:g} frames per second; frame dropped")
        payload = split_data_url(part.image_url)
        sniff_image(b64decode(payload[:16], "image_url"))  # cheap check; decode only if kept
        ts = part.streamagent.timestamp if part.streamagent else None
        self.media.add_frame(Frame(payload, self.media.sampler.now() if ts is None else ts))

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._fps_limit, self._tokens + (now - self._token_t) * self._fps_limit)
        self._token_t = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _ask(self, params: protocol.ResponseParams | None) -> None:
        frames = self.media.latest_frames()
        question = Question(
            text="\n".join(self.pending_text),
            instructions=(params.instructions if params and params.instructions
                          else self.instructions),
            frame=frames[-1] if frames else None,
            frames=frames,
            window=self.media.last_window,
            history=tuple(self.history),
        )
        self.history.extend(Turn("user", text) for text in self.pending_text)
        self.pending_text.clear()
        handlers = [s.handler for s in self.media.slots.values()]
        meta = self._metadata("+".join(h.name for h in handlers),
                              "+".join(sorted({h.modality for h in handlers})), question.window)
        if params and params.metadata:
            meta = {**{k: str(v) for k, v in params.metadata.items()}, **meta}
        run = ResponseRun(self.send, meta)
        self._launch(run, _answers(handlers, question), eager=True, remember=True)

    def _cancel(self, response_id: str | None) -> None:
        runs = [r for r in self.responses.values() if response_id in (None, r.id)]
        if not runs:
            raise NoActiveResponse(
                "no active response" + (f" with id {response_id}" if response_id else ""),
                param="response_id")
        for run in runs:
            run.cancel()

    async def _live_response(self, handler: Handler, work: Any) -> None:
        meta = self._metadata(handler.name, handler.modality, work)
        run = self._launch(ResponseRun(self.send, meta), handler.respond(work), eager=False)
        if run.task is not None:
            await run.task  # a cancelled worker cancels its response too

    def _launch(self, run: ResponseRun, deltas: AsyncIterator[str], eager: bool,
                remember: bool = False) -> ResponseRun:
        async def go() -> str:
            try:
                text = await run.run(deltas, eager)
            finally:
                self.responses.pop(run.id, None)
            if remember and text:
                self.history.append(Turn("assistant", text))
            return text

        self.responses[run.id] = run
        run.task = asyncio.create_task(go(), name=f"response-{run.id}")
        return run

    @staticmethod
    def _metadata(handler: str, modality: str, span: Any) -> dict[str, str]:
        meta = {"handler": handler, "modality": modality}
        if span is not None and hasattr(span, "start") and hasattr(span, "end"):
            meta["window_start_ms"] = str(round(span.start * 1000))
            meta["window_end_ms"] = str(round(span.end * 1000))
        return meta


async def _answers(handlers: list[Handler], question: Question) -> AsyncIterator[str]:
    """Each handler's part of the answer, one after the other, separated by new lines."""
    said = False
    for handler in handlers:
        first = True
        async for delta in handler.answer(question):
            if first and said:
                yield "\n"
            first, said = False, True
            yield delta
    if not said:
        yield "I have nothing to report yet."
