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
from dataclasses import dataclass, replace
from typing import Any

from agent.answers import answers, response_metadata
from agent.audio import AudioConverter
from agent.engine import Tool, ToolCall, Turn, check_tools
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
from agent.transcripts import DEFAULT_TRANSCRIBER, Heard, Listener, Transcriber, Vad
from agent.voice import Speech, SpeechChange
from agent.voice import speak as spoken
from agent.watch_runner import Watches
from agent.watches import Firing, Watch, check_calls, resolve
from agent.webhooks import Webhooks

log = logging.getLogger(__name__)
Sinks = Callable[[], ResponseSink]
"""Makes the sink of each new response (the protocol's way of showing it)."""
UNCHANGED: Any = object()


@dataclass(frozen=True, slots=True)
class Settings:
    """A change of the conversation's settings; what is left out stays as it is. Everything is
    checked before anything changes."""

    instructions: str | None = None
    audio_rate: int | None = None
    max_output_tokens: int | None = UNCHANGED
    """A cap on every response's tokens; ``None``: the models' own limits."""
    live: bool | None = None
    sample_fps: float | None = None
    video_window_s: float | None = None
    handlers: list[str] | None = None
    models: dict[str, str] | None = None
    lora: str | None = None
    """A LoRA adapter of the conversation's models; ``""``: none."""
    watches: tuple[Watch, ...] | None = None
    """The conditions to watch for (all of them: they replace the ones before)."""
    tools: tuple[Tool, ...] | None = None
    """The client's functions, offered to every response (``()``: none)."""
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    memory: bool | None = None
    """Whether LLM handlers and questions render from the session's timeline (``False``:
    each call is prompted afresh, and the timelines are forgotten)."""
    speech: SpeechChange | None = None
    server_tools: list[str] | None = None
    """Tools the server runs itself, offered to the model in questions (``[]``: none)."""
    mcp_tools: dict[str, ServerTool] | None = None
    """The tools of the session's MCP servers (``agent.mcp``), connected and listed."""
    transcription: str | None = None
    """The model that transcribes what the user says (``""``: none)."""
    vad: Vad | None = UNCHANGED
    """Server VAD (``None``: the client commits its turns)."""
    """Whether responses are spoken, and how (voice, speed, rate, encoding)."""


@dataclass(frozen=True, slots=True)
class Image:
    """A picture as sent: a data URL, at ``ts`` seconds of media time (``None``: now)."""

    url: str
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class Sound:
    """Base64 PCM16 at the conversation's audio rate, heard as one utterance."""

    pcm16: str


Content = str | Image | Sound


@dataclass(frozen=True, slots=True)
class Ask:
    """A request for one response (question mode)."""

    instructions: str | None = None
    metadata: dict[str, str] | None = None
    remember: bool = True
    """Whether the answer joins the conversation (``False``: out of band)."""
    context: tuple[Turn, ...] | None = None
    """The messages this response answers instead of the conversation (the last user turn is
    the question); the conversation's pending text then waits."""
    max_output_tokens: int | None = None
    tools: tuple[Tool, ...] | None = None
    """This response's functions instead of the session's."""
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    speak: bool | None = None
    """Whether this response is spoken (``None``: as the conversation's speech says)."""


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
        self._hearing(change)
        self.speech = speech
        if change.live is not None:
            self.media.live = change.live
        if change.memory is not None:
            self.options.memory.set(change.memory)
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

    def _hearing(self, change: Settings) -> None:
        """Start, change or stop the transcriber (checked first: a model of the pool)."""
        if change.transcription is None and change.vad is UNCHANGED:
            return
        old = self.transcriber
        model = change.transcription if change.transcription is not None else (
            old.model if old is not None else "")
        vad = change.vad if change.vad is not UNCHANGED else (old.vad if old else None)
        if model == DEFAULT_TRANSCRIBER or (vad is not None and not model):
            # what clients ask by default (OpenAI's model names, server VAD): the embedded
            # ASR when the pool has it; else hearing stays off, and session.updated says so
            model = "asr" if "asr" in self.runtime.pool.names else ""
            vad = vad if model else None
        if model and model not in self.runtime.pool.names:
            raise InvalidRequest(f"no model named {model!r} to transcribe; the pool has "
                                 f"{', '.join(self.runtime.pool.names)}",
                                 param="session.audio.input.transcription.model")
        if old is not None:
            asyncio.get_running_loop().create_task(old.close())
        self.transcriber = self.media.transcriber = Transcriber(
            self.runtime.pool, self.id, model, self.listener, self._heard, vad) if model else None

    async def _heard(self, heard: Heard, transcript: str) -> None:
        """The user's words wait for the next question; with server VAD, they ask it."""
        if not transcript:
            return
        self.pending_text.append(transcript)
        self.pending_ids.append(heard.item_id)
        vad = self.transcriber.vad if self.transcriber is not None else None
        if vad is None or not vad.create_response:
            return
        if self.question is not None and vad.interrupt_response:
            self.cancel(self.question.id)
        if self.question is None:
            self.ask(Ask())

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
        question = None if hearing else self._question(ask)
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
            question = self._question(ask)
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

    def _question(self, ask: Ask) -> Question:
        frames = self.media.latest_frames()
        options = replace(self.options.response, live=False)
        if ask.max_output_tokens is not None:
            options = replace(options, max_new_tokens=ask.max_output_tokens)
        if ask.tools is not None or ask.tool_choice is not None:
            tools, choice = check_tools(
                options.tools if ask.tools is None else ask.tools,
                options.tool_choice if ask.tool_choice is None else ask.tool_choice,
                "response.tool_choice")
            options = replace(options, tools=tools, tool_choice=choice)
        elif (options.forces_call and not self.pending_text and self.history
              and self.history[-1].role == "tool"):
            # the session's forced choice starts a tool loop, it does not hold it: going on
            # from a function's output, the model may answer (as the Agents SDK's
            # reset_tool_choice does), else it would call again forever
            options = replace(options, tool_choice="auto")
        if ask.parallel_tool_calls is not None:
            options = replace(options, parallel_tool_calls=ask.parallel_tool_calls)
        if self.running:  # offered beside the client's, in questions only
            options = replace(options, tools=(*options.tools,
                                              *(t.tool() for t in self.running.values())))
        question = Question(
            text="\n".join(self.pending_text),
            instructions=ask.instructions or self.instructions,
            frame=frames[-1] if frames else None, frames=frames,
            window=self.media.last_window, history=tuple(self.history), options=options,
            memory=ask.remember and ask.context is None)
        if ask.context is None:
            self.history.extend(Turn("user", text, item_id=item_id)
                                for text, item_id in zip(self.pending_text, self.pending_ids,
                                                         strict=True))
            self.pending_text.clear()
            self.pending_ids.clear()
            return question
        turns: list[Turn] = []  # its own context; the conversation waits
        instructions = question.instructions
        for turn in ask.context:
            if turn.role == "system":
                instructions = turn.text
            else:
                turns.append(turn)
        last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=None)
        if last_user is None:
            return replace(question, text="", instructions=instructions, history=tuple(turns))
        return replace(question, text=turns[last_user].text, instructions=instructions,
                       history=tuple(turns[:last_user] + turns[last_user + 1:]))

    def cancel(self, response_id: str | None = None) -> None:
        runs = [r for r in self.responses.values() if response_id in (None, r.id)]
        if not runs:
            raise NoActiveResponse(
                "no active response" + (f" with id {response_id}" if response_id else ""),
                param="response_id")
        for run in runs:
            run.cancel()
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
                           handler.respond(work), eager=False)
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


