"""A client's conversation, whatever the protocol: its media and handlers, its history and
instructions, its responses (one question at a time, live ones per handler) and its input
limits. Protocol adapters (``agent.protocols``) turn their wire events into these commands and
show the responses through a ``ResponseSink`` of their own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from agent.answers import answers, response_metadata
from agent.audio import AudioConverter
from agent.conversation_build import build_question, hear, set_hearing
from agent.conversation_types import UNCHANGED, Ask, Content, Image, Settings, Sound
from agent.engine import ToolCall, Turn, check_tools
from agent.errors import ConversationBusy, InvalidRequest, NoActiveResponse, Overloaded
from agent.handler import Handler, Question, SessionOptions
from agent.ids import new_id
from agent.intake import Intake
from agent.live import ANSWERED, LiveMedia
from agent.media import Frame, image_frame
from agent.parts import Part
from agent.response import Response, ResponseSink
from agent.runtime import Runtime
from agent.server_tools import ServerTool, ToolContext, answer_with, check_names, choose
from agent.timeline import Memory
from agent.transcripts import Heard, Listener, Transcriber
from agent.voice import Speech, speaker
from agent.voice import speak as spoken
from agent.watch_runner import Watches
from agent.watches import Firing, check_calls, resolve
from agent.webhooks import Webhooks

log = logging.getLogger(__name__)
Sinks = Callable[[], ResponseSink]
"""Makes the sink of each new response (the protocol's way of showing it)."""
__all__ = ["UNCHANGED", "Ask", "Content", "Conversation", "Image", "Settings", "Sinks", "Sound"]


class Conversation:
    def __init__(self, runtime: Runtime, model: str, sinks: Sinks,
                 listener: Listener | None = None) -> None:
        """``listener``: how the protocol shows what the user said (transcripts)."""
        self.runtime = runtime
        self.listener = listener if listener is not None else Listener()
        self.transcriber: Transcriber | None = None
        self.model = model
        self.profile = runtime.profile(model)
        self.id = new_id("sess")
        self.sinks = sinks
        self.audio_rate = 24000
        self.converter = AudioConverter(self.audio_rate)
        server = runtime.config.server
        self.history: deque[Turn] = deque(maxlen=server.max_history)
        self.pending_text: list[str] = []
        self.pending_ids: list[str] = []
        """The item id of each pending text."""
        self.said: dict[str, list[tuple[float, str]]] = {}
        """What spoken answers said, by item id, with where in their audio (the last
        ``max_history``): ``truncate`` cuts an answer to what was heard."""
        self.responses: dict[str, Response] = {}
        self.options = SessionOptions(memory=Memory(on=True, budgets=runtime.memory_budgets()))
        self.instructions = self.profile.instructions
        self.media = LiveMedia(runtime, self.id, self._live_response, profile=self.profile,
                               options=self.options)
        self.media.live = self.profile.live
        self.watches = self.media.watches = Watches(runtime.pool, self.id, self.options,
                                                    self._fired)
        self.webhooks = Webhooks(server, self.id, self.listener.error)
        self.intake = Intake(server)
        self.question: Response | None = None
        self.server_tools: dict[str, ServerTool] = {}
        """Tools the server runs for this conversation's questions, by name."""
        self.mcp_tools: dict[str, ServerTool] = {}
        """The session's MCP servers' tools, run like server tools."""
        self.lost: dict[str, int] = {}
        """Live windows whose response failed since each handler's last answered one."""
        self.speech = runtime.speech()
        """How responses are spoken (``None``: no voice is installed)."""

    @property
    def running(self) -> dict[str, ServerTool]:
        """Every tool the server runs in this conversation's questions: its own and MCP's."""
        return {**self.mcp_tools, **self.server_tools}

    @property
    def instructions(self) -> str:
        return self.options.instructions

    @instructions.setter
    def instructions(self, text: str) -> None:
        self.options.instructions = text

    def start(self) -> None:
        """Start the media clock and the profile's handlers (``HandlerFailed``: some did not
        start; the conversation goes on with the others)."""
        self.media.start()
        self.media.set_handlers(self.runtime.default_handlers(self.profile))

    async def close(self) -> None:
        """Cancel every response and stop the handlers; log what the conversation did."""
        await self.watches.close()  # no firing starts a response from now on
        await self.webhooks.close()
        if self.transcriber is not None:
            await self.transcriber.close()
        tasks = [r.task for r in self.responses.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        counts = self.counts()
        await self.media.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.options.memory.timelines.clear()  # their frames go now, not with the collector
        log.info("session %s closed: %d frames, %d dropped before decoding, %d refused, "
                 "%d windows, %d dropped by busy handlers, %d skipped as unchanged, "
                 "%d waited for a full model queue", self.id, *counts)

    def counts(self) -> tuple[int, ...]:
        st = self.media.sampler.stats
        return (st.frames, st.frames_dropped, self.intake.frames_refused, st.windows,
                self.media.handlers_dropped, self.media.windows_skipped, self.media.deferred)

    def configure(self, change: Settings, where: str = "session") -> None:
        """Apply ``change``; ``where`` names the settings object in error messages."""
        handlers = change.handlers if change.handlers is not None else self.media.handler_names
        if change.handlers is not None:
            self.runtime.check_handlers(change.handlers, self.profile)
        if change.models is not None:
            self.runtime.check_models(change.models, param=f"{where}.streamagent.models")
        if change.lora:
            self.runtime.check_lora(change.lora, handlers, self.profile)
        watches = None if change.watches is None else resolve(
            change.watches, self.runtime, self.profile.model_copy(
                update={"models": {**self.profile.models, **(change.models or {})}}))
        client = self.options.response.tools if change.tools is None else change.tools
        server_tools = choose(self.runtime.registry.tools, self.server_tools, change.server_tools,
                              client, f"{where}.streamagent.server_tools")
        mcp_tools = self.mcp_tools if change.mcp_tools is None else change.mcp_tools
        check_names(mcp_tools, client, f"{where}.tools")
        tools = check_tools(  # the choice may name a server tool
            (*client, *(t.tool() for t in {**mcp_tools, **server_tools}.values())),
            self.options.response.tool_choice if change.tool_choice is None
            else change.tool_choice, f"{where}.tool_choice")
        tools = (client, tools[1])
        check_calls(self.watches.watches if watches is None else watches,
                    [t.name for t in tools[0]], where)
        if watches is not None:
            self.webhooks.check(watches, where)
        speech = (self.speech if change.speech is None
                  else change.speech.apply(self.speech, self.runtime.voice))
        if change.audio_rate is not None:
            self.converter = AudioConverter(change.audio_rate)
            self.audio_rate = change.audio_rate
        if change.instructions is not None:
            self.intake.text(change.instructions, 0, param=f"{where}.instructions")
            self.instructions = change.instructions
        if change.max_output_tokens is not UNCHANGED:
            self._set_options(max_new_tokens=change.max_output_tokens)
        if change.tools is not None or change.tool_choice is not None:
            self._set_options(tools=tools[0], tool_choice=tools[1])
        if change.parallel_tool_calls is not None:
            self._set_options(parallel_tool_calls=change.parallel_tool_calls)
        self.server_tools = server_tools
        self.mcp_tools = mcp_tools
        set_hearing(self, change)
        self.speech = speech
        self._set_options(speaker=speaker(self._speech(None)))  # live responses speak so
        if change.live is not None:
            self.media.live = change.live
        if change.memory is not None:
            self.options.memory.set(change.memory)
        if change.window is not None:
            self.options.memory.narrow(change.window)
        if change.sample_fps is not None:
            self.media.set_fps(change.sample_fps)
        if change.video_window_s is not None:
            self.media.set_video_window(change.video_window_s)
        if change.models is not None:
            self.profile = self.media.set_models(change.models)
        if change.lora is not None:
            self._set_options(lora=change.lora or None)
        if watches is not None:
            self.watches.set(watches)
        if change.handlers is not None:
            self.media.set_handlers(change.handlers)

    def _set_options(self, **changes: Any) -> None:
        self.options.response = replace(self.options.response, **changes)

    def add_audio(self, pcm16: str, ts: float | None = None) -> None:
        """Base64 PCM16 at the conversation's rate, within its audio rate limit."""
        self.intake.audio_seconds(len(pcm16) * 3 / 4 / 2 / self.audio_rate)
        self.media.add_audio(self.converter(pcm16), ts)

    def commit_audio(self) -> str | None:
        """The audio so far ends its window: utterances in it end. With transcription and no
        server VAD, it is one utterance: its user item's id."""
        self.media.flush()
        if self.transcriber is not None and self.transcriber.vad is None:
            return self.transcriber.commit()
        return None

    def clear_audio(self) -> None:
        self.converter = AudioConverter(self.audio_rate)
        self.media.clear_audio()
        if self.transcriber is not None:
            self.transcriber.clear()

    async def _heard(self, heard: Heard, transcript: str) -> None:
        """The user's words wait for the next question; with server VAD, they ask it."""
        await hear(self, heard, transcript)

    def add_message(self, role: str, content: list[Content], item_id: str = "") -> None:
        """A message: a user's text waits for the next question, a system text replaces the
        instructions, an assistant's joins the history; pictures and sounds go to the media."""
        text = "".join(c for c in content if isinstance(c, str))
        self.intake.text(text, sum(map(len, self.pending_text)) if role == "user" else 0)
        for part in content:
            if isinstance(part, str):
                if role == "system":
                    self.instructions = part
                elif role == "user":
                    self.pending_text.append(part)
                    self.pending_ids.append(item_id)
                else:
                    self.history.append(Turn(role, part, item_id=item_id))
            elif isinstance(part, Image):
                self.add_image(part)
            else:
                self.add_audio(part.pcm16)
                self.media.flush()

    def add_call(self, call: ToolCall, item_id: str = "") -> None:
        """A function call the model made (a client syncing its context) joins the history."""
        self.intake.text(call.arguments, 0, param="item.arguments")
        self.history.append(Turn("assistant", "", tool_calls=(call,), item_id=item_id))

    def add_call_output(self, call_id: str, output: str, item_id: str = "") -> None:
        """What a client's function returned joins the history; the next response goes on
        from it."""
        self.intake.text(output, 0, param="item.output")
        self.history.append(Turn("tool", output, call_id=call_id, item_id=item_id))

    def forget(self, item_id: str) -> bool:
        """Delete an item from the conversation (waiting text or history); whether it was
        there."""
        if item_id in self.pending_ids:
            i = self.pending_ids.index(item_id)
            del self.pending_ids[i], self.pending_text[i]
            return True
        kept = [t for t in self.history if t.item_id != item_id]
        found = len(kept) < len(self.history)
        if found:
            self.history = deque(kept, maxlen=self.history.maxlen)
        return found

    def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """A spoken answer was heard up to ``audio_end_ms``: its history keeps what was said
        before that (``InvalidRequest`` for an item that is not a spoken answer here)."""
        said = self.said.get(item_id)
        where = next((i for i, t in enumerate(self.history) if t.item_id == item_id), None)
        if said is None or where is None:
            raise InvalidRequest(f"no spoken answer {item_id!r} in the conversation to "
                                 "truncate", param="item_id")
        heard = "".join(text for start, text in said if start < audio_end_ms).strip()
        self.history[where] = replace(self.history[where], text=heard)

    def add_image(self, image: Image) -> None:
        self.intake.frame()
        ts = self.media.sampler.now() if image.ts is None else image.ts
        self.media.add_frame(image_frame(image.url, ts))

    def ask(self, ask: Ask) -> Response:
        """Start the one question-mode response (``ConversationBusy`` while one runs)."""
        if self.question is not None:
            raise ConversationBusy.about(self.question.id)
        self.intake.text(ask.instructions or "", 0, param="response.instructions")
        self._speech(ask.speak)  # checked before the question takes the pending text
        # words still being transcribed are part of the question: it is asked once they are
        hearing = self.transcriber is not None and self.transcriber.busy
        question = None if hearing else build_question(self, ask)
        handlers = [s.handler for s in self.media.slots.values()]
        meta = response_metadata("+".join(h.name for h in handlers),
                                 "+".join(sorted({h.modality for h in handlers})),
                                 self.media.last_window)
        meta = {**(ask.metadata or {}), **meta}
        offered = ask.tools if ask.tools is not None else self.options.response.tools
        # a function call alone has no message item: with tools, the message opens with text
        self.question = self._launch(Response(self.sinks(), meta),
                                     self._answer(ask, question, handlers),
                                     eager=not offered and not self.running,
                                     remember=ask.remember, speak=ask.speak)
        return self.question

    async def _answer(self, ask: Ask, question: Question | None,
                      handlers: list[Handler]) -> AsyncIterator[Part]:
        if question is None:
            assert self.transcriber is not None
            await self.transcriber.settled()
            question = build_question(self, ask)
        parts = answers(handlers, question, self.media.settled)
        if self.running:
            ctx = ToolContext(self.runtime.pool, self.id, self._newest_frame)
            parts = answer_with(lambda q: answers(handlers, q, self.media.settled), question,
                                self.running, ctx,
                                self.history.extend if ask.remember else None)
        async with contextlib.aclosing(parts) as stream:  # type: ignore[type-var]
            async for part in stream:
                yield part

    def _newest_frame(self) -> Frame | None:
        frames = self.media.latest_frames()
        return frames[-1] if frames else None

    def cancel(self, response_id: str | None = None, reason: str = "client_cancelled") -> None:
        runs = [r for r in self.responses.values() if response_id in (None, r.id)]
        if not runs:
            raise NoActiveResponse(
                "no active response" + (f" with id {response_id}" if response_id else ""),
                param="response_id")
        for run in runs:
            run.cancel(reason)
            if run is self.question:  # cancelled: the next question may start now
                self.question = None

    async def _live_response(self, handler: Handler, work: Any) -> str:
        """A live response to ``work``; how it ended. A full model queue is not the client's
        problem here: the response says nothing and ends ``deferred`` (the window waits)."""
        meta = response_metadata(handler.name, handler.modality, work)
        meta["windows_skipped"] = str(self.media.skipped(handler.name))
        meta["windows_superseded"] = str(self.media.superseded(handler.name))
        if lost := self.lost.get(handler.name, 0):
            meta["windows_lost"] = str(lost)
        about = (f"{handler.name}'s live window {meta['window_start_ms']}-"
                 f"{meta['window_end_ms']} ms" if "window_start_ms" in meta else
                 f"{handler.name}'s live response")
        run = self._launch(Response(self.sinks(), meta, defer=Overloaded, about=about),
                           handler.respond(work), eager=False,
                           speak=None if handler.speaks_live else False)
        if run.task is not None:
            await run.task  # a cancelled worker cancels its response too
        if run.status == "failed":
            self.lost[handler.name] = lost + 1
        elif run.status in ANSWERED:  # it told the client of the windows lost before it
            self.lost.pop(handler.name, None)
        return run.status

    def _fired(self, firing: Firing) -> None:
        """A watch fired: a response of its own, shown as a live one is. A call of the
        watch's tool joins the conversation, so the function's output can follow it. A
        watch with a webhook POSTs it there too."""
        self.webhooks.post(firing)
        self._launch(Response(self.sinks(), firing.metadata(), about=firing.about),
                     firing.parts(), eager=False, remember=firing.watch.tool is not None)

    def _speech(self, on: bool | None) -> Speech | None:
        """How a response is spoken (``None``: not); ``on`` overrides the conversation's."""
        if self.speech is None:
            if on:
                raise InvalidRequest("no voice is installed, so this server answers in text "
                                     "only", param="response.output_modalities")
            return None
        return self.speech if (self.speech.on if on is None else on) else None

    def _launch(self, run: Response, parts: AsyncIterator[str | Part], eager: bool,
                remember: bool = False, speak: bool | None = None) -> Response:
        """Run ``run`` on ``parts`` (spoken as well, when the conversation or ``speak`` says
        so: every handler's answer, live or asked, can be)."""
        run.speech = self._speech(speak)
        if run.speech is not None:
            parts = spoken(parts, run.speech)
        async def go() -> str:
            try:
                text = await run.run(parts, eager)
            finally:
                self.responses.pop(run.id, None)
                if self.question is run:
                    self.question = None
            calls = tuple(ToolCall(c.call_id, c.name, c.text) for c in run.calls.values()
                          if not c.server)  # the server's own joined the history as they ran
            if remember and (text or calls):
                self.history.append(Turn("assistant", text, tool_calls=calls,
                                         item_id=run.item_id))
                if run.said:
                    self.said[run.item_id] = run.said
                    while len(self.said) > (self.history.maxlen or 1):
                        del self.said[next(iter(self.said))]
            return text

        self.responses[run.id] = run
        run.task = asyncio.create_task(go(), name=f"response-{run.id}")
        return run


