"""What a conversation builds from its state: the question a response answers, and the
transcriber that hears the user (and what it does with the words heard)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from agent.conversation_types import UNCHANGED, Ask, Settings
from agent.engine import Turn, check_tools
from agent.errors import InvalidRequest
from agent.handler import Question
from agent.transcripts import DEFAULT_TRANSCRIBER, Heard, Transcriber
from agent.voice import speaker

if TYPE_CHECKING:
    from agent.conversation import Conversation


def build_question(conv: Conversation, ask: Ask) -> Question:
    """The question ``ask`` puts to ``conv``'s handlers; the pending text joins the history
    (unless ``ask`` brings its own context)."""
    frames = conv.media.latest_frames()
    options = replace(conv.options.response, live=False,
                      speaker=speaker(conv._speech(ask.speak)))
    if ask.max_output_tokens is not None:
        options = replace(options, max_new_tokens=ask.max_output_tokens)
    if ask.tools is not None or ask.tool_choice is not None:
        tools, choice = check_tools(
            options.tools if ask.tools is None else ask.tools,
            options.tool_choice if ask.tool_choice is None else ask.tool_choice,
            "response.tool_choice")
        options = replace(options, tools=tools, tool_choice=choice)
    elif (options.forces_call and not conv.pending_text and conv.history
          and conv.history[-1].role == "tool"):
        # the session's forced choice starts a tool loop, it does not hold it: going on
        # from a function's output, the model may answer (as the Agents SDK's
        # reset_tool_choice does), else it would call again forever
        options = replace(options, tool_choice="auto")
    if ask.parallel_tool_calls is not None:
        options = replace(options, parallel_tool_calls=ask.parallel_tool_calls)
    if conv.running:  # offered beside the client's, in questions only
        options = replace(options, tools=(*options.tools,
                                          *(t.tool() for t in conv.running.values())))
    question = Question(
        text="\n".join(conv.pending_text),
        instructions=ask.instructions or conv.instructions,
        frame=frames[-1] if frames else None, frames=frames,
        window=conv.media.last_window, history=tuple(conv.history), options=options,
        memory=ask.remember and ask.context is None)
    if ask.context is None:
        conv.history.extend(Turn("user", text, item_id=item_id)
                            for text, item_id in zip(conv.pending_text, conv.pending_ids,
                                                     strict=True))
        conv.pending_text.clear()
        conv.pending_ids.clear()
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


def set_hearing(conv: Conversation, change: Settings) -> None:
    """Start, change or stop the transcriber (checked first: a model of the pool)."""
    if change.transcription is None and change.vad is UNCHANGED:
        return
    old = conv.transcriber
    model = change.transcription if change.transcription is not None else (
        old.model if old is not None else "")
    vad = change.vad if change.vad is not UNCHANGED else (old.vad if old else None)
    if model == DEFAULT_TRANSCRIBER or (vad is not None and not model):
        # what clients ask by default (OpenAI's model names, server VAD): the embedded
        # ASR when the pool has it; else hearing stays off, and session.updated says so
        model = "asr" if "asr" in conv.runtime.pool.names else ""
        vad = vad if model else None
    if model and model not in conv.runtime.pool.names:
        raise InvalidRequest(f"no model named {model!r} to transcribe; the pool has "
                             f"{', '.join(conv.runtime.pool.names)}",
                             param="session.audio.input.transcription.model")
    if old is not None:
        asyncio.get_running_loop().create_task(old.close())
    conv.transcriber = conv.media.transcriber = Transcriber(
        conv.runtime.pool, conv.id, model, conv.listener, conv._heard, vad,
        on_speech=lambda: interrupt(conv)) if model else None


async def interrupt(conv: Conversation) -> None:
    """The user started to speak: with server VAD's ``interrupt_response``, the answer under
    way stops now (``turn_detected``), not when the user's words are transcribed."""
    vad = conv.transcriber.vad if conv.transcriber is not None else None
    if vad is not None and vad.interrupt_response and conv.question is not None:
        conv.cancel(conv.question.id, reason="turn_detected")


async def hear(conv: Conversation, heard: Heard, transcript: str) -> None:
    """The user's words wait for the next question; with server VAD, they ask it."""
    if not transcript:
        return
    conv.pending_text.append(transcript)
    conv.pending_ids.append(heard.item_id)
    vad = conv.transcriber.vad if conv.transcriber is not None else None
    if vad is None or not vad.create_response:
        return
    if conv.question is not None and vad.interrupt_response:
        conv.cancel(conv.question.id, reason="turn_detected")
    if conv.question is None:
        conv.ask(Ask())
