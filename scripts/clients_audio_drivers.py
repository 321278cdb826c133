"""Pipecat's, LiveKit's and google-genai's realtime clients, driven as their docs show, with
their default output (audio): run by ``scripts/check_clients_audio.py`` in the clients' own
virtual env (they are not streamagent's dependencies). Imports only the standard library, the
client libraries and Pillow (which Pipecat brings).

    PYTHON clients_audio_drivers.py CLIENT PORT IMAGE.jpg QUESTION.wav OUT.wav [CA.pem]

Each driver shows the camera frame IMAGE, asks a question (the ``-text`` drivers in text, the
``-voice`` drivers by speaking QUESTION.wav, 16-bit mono), writes the PCM the library hands to
its app into OUT.wav and prints one line ``RESULT {json}``: the answer text the library saw,
the audio's rate, the errors it reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import wave
from collections.abc import Awaitable, Callable
from typing import Any

from PIL import Image

QUESTION = "What is written?"
Result = dict[str, Any]


def read_wav(path: str) -> tuple[bytes, int]:
    with wave.open(path) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def spoken_turn(path: str) -> tuple[bytes, int]:
    """QUESTION.wav with half a second of silence before it and two after (the end of a
    turn, for server VAD)."""
    pcm, rate = read_wav(path)
    return b"\0" * rate + pcm + b"\0" * (rate * 4), rate


async def pipecat(port: int, image: str, speech: str | None) -> tuple[bytes, int, Result]:
    from pipecat.frames.frames import (
        EndFrame,
        ErrorFrame,
        InputAudioRawFrame,
        InputImageRawFrame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMTextFrame,
        OutputAudioRawFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineTask
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.openai.realtime import events
    from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService

    pcm, rates, text, errors, done = bytearray(), set(), [], [], asyncio.Event()

    class Sink(FrameProcessor):  # type: ignore[misc]  # what a transport would play
        async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, OutputAudioRawFrame):
                pcm.extend(frame.audio)
                rates.add(frame.sample_rate)
            elif isinstance(frame, LLMTextFrame):
                text.append(frame.text)
            elif isinstance(frame, ErrorFrame):
                errors.append(frame.error)
                done.set()
            elif isinstance(frame, LLMFullResponseEndFrame):
                done.set()
            await self.push_frame(frame, direction)

    # the session properties of Pipecat's OpenAI Realtime example, for the spoken turn
    props = events.SessionProperties(audio=events.AudioConfiguration(input=events.AudioInput(
        transcription=events.InputAudioTranscription(model="whisper-1"),
        turn_detection=events.SemanticTurnDetection()))) if speech else None
    llm = OpenAIRealtimeLLMService(
        api_key="any", base_url=f"ws://127.0.0.1:{port}/v1/realtime", session_properties=props,
        settings=OpenAIRealtimeLLMService.Settings(model="default"))
    context = LLMContext()
    pair = LLMContextAggregatorPair(context)
    task = PipelineTask(Pipeline([pair.user(), llm, Sink(), pair.assistant()]))
    runner = asyncio.create_task(PipelineRunner(handle_sigint=False).run(task))
    await asyncio.sleep(2)  # connected, session updated
    picture = Image.open(image).convert("RGB")
    await task.queue_frame(InputImageRawFrame(image=picture.tobytes(), size=picture.size,
                                              format="RGB"))
    await asyncio.sleep(1.5)
    if speech is None:
        context.add_message({"role": "user", "content": QUESTION})
        await task.queue_frame(LLMContextFrame(context=context))
    else:
        audio, rate = spoken_turn(speech)
        step = rate // 50 * 2  # 20 ms, in real time, as a microphone sends it
        for i in range(0, len(audio), step):
            await task.queue_frame(InputAudioRawFrame(audio=audio[i:i + step], sample_rate=rate,
                                                      num_channels=1))
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(done.wait(), 60)
    except TimeoutError:
        errors.append("no response ended in 60 s")
    await task.queue_frame(EndFrame())
    await asyncio.wait_for(runner, 30)
    return bytes(pcm), min(rates, default=24000), {"text": "".join(text), "errors": errors,
                                                   "rates": sorted(rates)}


async def livekit(port: int, image: str, speech: str | None) -> tuple[bytes, int, Result]:
    from livekit import rtc
    from livekit.plugins.openai.realtime import RealtimeModel

    model = RealtimeModel(model="default", base_url=f"ws://127.0.0.1:{port}/v1", api_key="any")
    session = model.session()
    errors: list[str] = []
    generations: asyncio.Queue[Any] = asyncio.Queue()
    session.on("error", lambda e: errors.append(repr(e.error)))
    session.on("generation_created", generations.put_nowait)
    await asyncio.sleep(1)
    picture = Image.open(image).convert("RGBA")
    session.push_video(rtc.VideoFrame(picture.width, picture.height, rtc.VideoBufferType.RGBA,
                                      picture.tobytes()))
    await asyncio.sleep(1)
    if speech is None:
        ctx = session.chat_ctx.copy()
        ctx.add_message(role="user", content=QUESTION)
        await session.update_chat_ctx(ctx)
        generation = await session.generate_reply()
    else:
        audio, rate = spoken_turn(speech)
        n = rate // 50
        for i in range(0, len(audio) // 2, n):
            chunk = audio[i * 2:(i + n) * 2]
            session.push_audio(rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2))
            await asyncio.sleep(0.02)
        generation = await asyncio.wait_for(generations.get(), 30)
    pcm, rates, text = bytearray(), set(), []

    async def message(msg: Any) -> None:
        async def audio() -> None:
            async for frame in msg.audio_stream:
                pcm.extend(bytes(frame.data))
                rates.add(frame.sample_rate)

        async def words() -> None:
            async for delta in msg.text_stream:
                text.append(delta)

        await asyncio.gather(audio(), words())

    async for msg in generation.message_stream:
        await message(msg)
    await session.aclose()
    await model.aclose()
    return bytes(pcm), min(rates, default=24000), {"text": "".join(text), "errors": errors,
                                                   "rates": sorted(rates)}


async def genai(port: int, image: str, speech: str | None, ca: str) -> tuple[bytes, int, Result]:
    from google import genai
    from google.genai import types

    client = genai.Client(api_key="any", http_options=types.HttpOptions(
        base_url=f"https://127.0.0.1:{port}",
        async_client_args={"ssl": ssl.create_default_context(cafile=ca)}))
    config = types.LiveConnectConfig(response_modalities=[types.Modality.AUDIO],
                                     output_audio_transcription=types.AudioTranscriptionConfig())
    pcm, mimes, text = bytearray(), set(), []
    with open(image, "rb") as f:  # noqa: ASYNC230 (a small file, before connecting)
        picture = f.read()
    async with client.aio.live.connect(model="default", config=config) as session:
        await session.send_realtime_input(video=types.Blob(data=picture, mime_type="image/jpeg"))
        if speech is None:
            await session.send_client_content(turns=types.Content(
                role="user", parts=[types.Part(text=QUESTION)]), turn_complete=True)
        else:
            audio, rate = spoken_turn(speech)
            step = rate // 10 * 2
            for i in range(0, len(audio), step):
                await session.send_realtime_input(audio=types.Blob(
                    data=audio[i:i + step], mime_type=f"audio/pcm;rate={rate}"))
                await asyncio.sleep(0.1)
            # the microphone goes off: streamagent has no automatic activity detection yet
            await session.send_realtime_input(audio_stream_end=True)
        async for m in session.receive():
            content = m.server_content
            for part in (content.model_turn.parts or []) if content and content.model_turn else []:
                if part.inline_data and part.inline_data.data:
                    pcm.extend(part.inline_data.data)
                    mimes.add(part.inline_data.mime_type)
            if content and content.output_transcription and content.output_transcription.text:
                text.append(content.output_transcription.text)
    rate = 24000 if mimes == {"audio/pcm;rate=24000"} else 0
    return bytes(pcm), rate, {"text": "".join(text), "errors": [], "mime_types": sorted(mimes)}


Driver = Callable[[], Awaitable[tuple[bytes, int, Result]]]


def main(argv: list[str]) -> None:
    client, port, image, question, out = argv[:5]
    kind, _, how = client.partition("-")
    speech = question if how == "voice" else None
    drivers: dict[str, Driver] = {
        "pipecat": lambda: pipecat(int(port), image, speech),
        "livekit": lambda: livekit(int(port), image, speech),
        "genai": lambda: genai(int(port), image, speech, argv[5]),
    }
    try:
        pcm, rate, result = asyncio.run(asyncio.wait_for(drivers[kind](), 120))
    except Exception as exc:  # a client that breaks: say how, for the report
        pcm, rate, result = b"", 24000, {"text": "", "errors": [f"{type(exc).__name__}: {exc}"]}
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate or 24000)
        w.writeframes(pcm)
    result |= {"rate": rate, "seconds": len(pcm) / 2 / (rate or 24000)}
    sys.stdout.flush()
    os.write(1, ("RESULT " + json.dumps(result) + "\n").encode())


if __name__ == "__main__":
    main(sys.argv[1:])
