"""One OpenAI Realtime session per websocket: client events in, server events out.

The only place that maps errors to the wire. Per-message problems become ``error`` events and
the session goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from agent import events, protocol
from agent.answers import answers, own_context, response_metadata, token_cap
from agent.audio import AudioConverter
from agent.engine import Turn
from agent.errors import (
    ConversationBusy,
    HandlerFailed,
    InvalidMedia,
    InvalidRequest,
    NoActiveResponse,
    StreamAgentError,
)
from agent.handler import Handler, Question, SessionOptions
from agent.intake import Intake
from agent.live import LiveMedia
from agent.media import image_frame
from agent.outbox import Outbox, Render
from agent.parts import Part
from agent.responses import ResponseRun
from agent.runtime import Runtime

log = logging.getLogger(__name__)
SendText = Callable[[str], Awaitable[None]]
Message = str | bytes | dict[str, Any]
"""A client message: JSON text, or an object a dialect has parsed (and bounded) already."""


class RealtimeSession:
    def __init__(self, runtime: Runtime, model: str, send_text: SendText,
                 render: Render | None = None) -> None:
        """``render``: a dialect's form of each server event (``None``: not sent)."""
        self.runtime = runtime
        self.model = model
        self.profile = runtime.profile(model)
        self.id = events.new_id("sess")
        self.send_text = send_text
        self.instructions = self.profile.instructions
        self.audio_rate = 24000
        self.converter = AudioConverter(self.audio_rate)
        server = runtime.config.server
        self.history: deque[Turn] = deque(maxlen=server.max_history)
        self.pending_text: list[str] = []
        self.responses: dict[str, ResponseRun] = {}
        self.outbox = Outbox(self.id, server.slow_client_timeout_s, server.max_outbox_bytes,
                             render)
        self.options = SessionOptions()
        self.media = LiveMedia(runtime, self.id, self._live_response, profile=self.profile,
                               options=self.options)
        self.media.live = self.profile.live
        self.intake = Intake(server)
        self.question: ResponseRun | None = None

    async def send(self, event: dict[str, Any]) -> None:
        await self.outbox.put(event)

    async def run(self, messages: AsyncIterator[Message]) -> None:
        """Serve until the client goes away, the writer dies or the client stops reading;
        whichever comes first, everything this session started is cancelled."""
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(self.outbox.write(self.send_text), name=f"writer-{self.id}"),
            asyncio.create_task(self._read(messages), name=f"reader-{self.id}"),
            asyncio.create_task(self.outbox.stalled.wait(), name=f"stalled-{self.id}")]
        try:
            self.media.start()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.outbox.close()
            tasks += [r.task for r in self.responses.values() if r.task is not None]
            for task in tasks:
                task.cancel()
            counts = self._counts()
            await self.media.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("session %s closed: %d frames, %d dropped before decoding, %d refused, "
                     "%d windows, %d dropped by busy handlers, %d skipped as unchanged",
                     self.id, *counts)

    def _counts(self) -> tuple[int, ...]:
        st = self.media.sampler.stats
        return (st.frames, st.frames_dropped, self.intake.frames_refused, st.windows,
                self.media.handlers_dropped, self.media.windows_skipped)

    async def _read(self, messages: AsyncIterator[Message]) -> None:
        failed = None
        try:
            self.media.set_handlers(self.runtime.default_handlers(self.profile))
        except HandlerFailed as exc:  # the session goes on with the handlers that started
            failed = exc
        await self.send(events.event("session.created", session=self._session_object()))
        if failed is not None:
            await self.send(events.error(failed))
        async for message in messages:  # a socket can hold thousands of small messages that
            await self.handle(message)  # arrive without a wait: let the other tasks run
            await asyncio.sleep(0)

    async def handle(self, message: Message) -> None:
        event_id = None
        try:
            if isinstance(message, bytes):
                raise InvalidRequest("binary messages are not supported: send JSON text")
            event = protocol.parse_event(message)
            event_id = event.event_id
            await self.dispatch(event)
        except StreamAgentError as exc:
            await self.send(events.error(exc, event_id))
        except Exception as exc:  # a bug: say so, and keep the session
            log.exception("session %s: event %s failed", self.id, event_id)
            await self.send(events.error(StreamAgentError(f"internal error: {exc!r}"), event_id))

    async def dispatch(self, event: protocol.ClientEvent) -> None:
        if isinstance(event, protocol.SessionUpdate):
            self._update(event.session)
            await self.send(events.event("session.updated", session=self._session_object()))
        elif isinstance(event, protocol.AudioAppend):
            self._add_audio(event.audio, event.streamagent.timestamp if event.streamagent else None)
        elif isinstance(event, protocol.AudioCommit):
            self.media.flush()
            await self.send(events.event("input_audio_buffer.committed",
                                         item_id=events.new_id("item"), previous_item_id=None))
        elif isinstance(event, protocol.AudioClear):
            self.converter = AudioConverter(self.audio_rate)
            self.media.clear_audio()
            await self.send(events.event("input_audio_buffer.cleared"))
        elif isinstance(event, protocol.ItemCreate):
            await self._add_item(event)
        elif isinstance(event, protocol.ResponseCreate):
            self._ask(event.response)
        elif isinstance(event, protocol.ResponseCancel):
            self._cancel(event.response_id)

    def _update(self, params: protocol.SessionParams) -> None:
        ext = params.streamagent
        if ext is not None:  # everything checked before anything changes
            handlers = ext.handlers if ext.handlers is not None else self.media.handler_names
            if ext.handlers is not None:
                self.runtime.check_handlers(ext.handlers, self.profile)
            if ext.models is not None:
                self.runtime.check_models(ext.models, param="session.streamagent.models")
            if ext.lora:
                self.runtime.check_lora(ext.lora, handlers, self.profile)
        fmt = params.audio.input.format if params.audio and params.audio.input else None
        if fmt is not None:
            if fmt.type not in ("audio/pcm", "pcm16"):
                raise InvalidMedia(f"unsupported audio format {fmt.type!r}; use audio/pcm",
                                   param="session.audio.input.format.type")
            self.converter = AudioConverter(fmt.rate)
            self.audio_rate = fmt.rate
        if params.instructions is not None:
            self.intake.text(params.instructions, 0, param="session.instructions")
            self.instructions = params.instructions
        if params.max_output_tokens is not None:
            self._set_options(max_new_tokens=token_cap(params.max_output_tokens))
        if ext is None:
            return
        if ext.live is not None:
            self.media.live = ext.live
        if ext.sample_fps is not None:
            self.media.set_fps(ext.sample_fps)
        if ext.video_window_s is not None:
            self.media.set_video_window(ext.video_window_s)
        if ext.models is not None:
            self.profile = self.media.set_models(ext.models)
        if ext.lora is not None:
            self._set_options(lora=ext.lora or None)
        if ext.handlers is not None:
            self.media.set_handlers(ext.handlers)

    def _set_options(self, **changes: Any) -> None:
        self.options.response = replace(self.options.response, **changes)

    def _session_object(self) -> dict[str, Any]:
        return events.session_object(self.id, self.model, {
            "instructions": self.instructions,
            "output_modalities": ["text"],
            "max_output_tokens": self.options.response.max_new_tokens or "inf",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.audio_rate}}},
            "streamagent": {
                "live": self.media.live,
                "sample_fps": 1.0 / self.media.sampler.window_s,
                "handlers": self.media.handler_names,
                "video_window_s": self.media.video_window_s,
                "available_handlers": self.runtime.usable_handlers(self.profile),
                "models": {h: self.runtime.model_for(h, self.profile)
                           for h in self.media.handler_names},
                "lora": self.options.response.lora,
            },
        })

    def _add_audio(self, b64: str, ts: float | None) -> None:
        """Decode a client audio chunk within the session's audio rate limit."""
        self.intake.audio_seconds(len(b64) * 3 / 4 / 2 / self.audio_rate)
        self.media.add_audio(self.converter(b64), ts)

    async def _add_item(self, event: protocol.ItemCreate) -> None:
        item = event.item
        texts = [p.text for p in item.content if isinstance(p, protocol.InputText)]
        self.intake.text("".join(texts), sum(map(len, self.pending_text)) if item.role == "user"
                         else 0)
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
                self._add_audio(part.audio, None)
                self.media.flush()
        item_id = item.id or events.new_id("item")
        wire = {"id": item_id, "object": "realtime.item", "type": "message", "role": item.role,
                "status": "completed",
                "content": [p.model_dump(exclude_none=True) for p in item.content]}
        prev = event.previous_item_id
        await self.send(events.event("conversation.item.added", previous_item_id=prev, item=wire))
        await self.send(events.event("conversation.item.done", previous_item_id=prev, item=wire))

    def _add_image(self, part: protocol.InputImage) -> None:
        self.intake.frame()
        ts = part.streamagent.timestamp if part.streamagent else None
        self.media.add_frame(image_frame(part.image_url,
                                         self.media.sampler.now() if ts is None else ts))

    def _ask(self, params: protocol.ResponseParams | None) -> None:
        if self.question is not None:
            raise ConversationBusy.about(self.question.id)
        instructions = params.instructions if params and params.instructions else None
        self.intake.text(instructions or "", 0, param="response.instructions")
        frames = self.media.latest_frames()
        options = self.options.response
        if params and params.max_output_tokens:
            options = replace(options, max_new_tokens=token_cap(params.max_output_tokens))
        question = Question(
            text="\n".join(self.pending_text),
            instructions=instructions or self.instructions,
            frame=frames[-1] if frames else None, frames=frames,
            window=self.media.last_window, history=tuple(self.history), options=options,
        )
        if params and params.input is not None:  # its own context; the conversation waits
            question = own_context(question, params.input, self.intake)
        else:
            self.history.extend(Turn("user", text) for text in self.pending_text)
            self.pending_text.clear()
        handlers = [s.handler for s in self.media.slots.values()]
        meta = response_metadata("+".join(h.name for h in handlers),
                              "+".join(sorted({h.modality for h in handlers})), question.window)
        if params and params.metadata:
            meta = {**params.metadata, **meta}
        run = ResponseRun(self.send, meta)
        self.question = self._launch(run, answers(handlers, question, self.media.settled),
                                     eager=True,
                                     remember=not params or params.conversation != "none")

    def _cancel(self, response_id: str | None) -> None:
        runs = [r for r in self.responses.values() if response_id in (None, r.id)]
        if not runs:
            raise NoActiveResponse(
                "no active response" + (f" with id {response_id}" if response_id else ""),
                param="response_id")
        for run in runs:
            run.cancel()
            if run is self.question:  # cancelled: the next response.create may start now
                self.question = None

    async def _live_response(self, handler: Handler, work: Any) -> None:
        meta = response_metadata(handler.name, handler.modality, work)
        meta["windows_skipped"] = str(self.media.skipped(handler.name))
        run = self._launch(ResponseRun(self.send, meta), handler.respond(work), eager=False)
        if run.task is not None:
            await run.task  # a cancelled worker cancels its response too

    def _launch(self, run: ResponseRun, deltas: AsyncIterator[str | Part], eager: bool,
                remember: bool = False) -> ResponseRun:
        async def go() -> str:
            try:
                text = await run.run(deltas, eager)
            finally:
                self.responses.pop(run.id, None)
                if self.question is run:
                    self.question = None
            if remember and text:
                self.history.append(Turn("assistant", text))
            return text

        self.responses[run.id] = run
        run.task = asyncio.create_task(go(), name=f"response-{run.id}")
        return run
