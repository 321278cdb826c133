"""``response.create`` with OpenAI's ``conversation: "none"`` (an out-of-band answer that does not
join the conversation) and ``input`` (its own context instead of the conversation)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from agent import Handler, Question, hookimpl
from agent.testing import fake_runtime
from agent.uvicorn_server import running
from tests.helpers import Client


class Recorder(Handler):
    """Answers with the question's text, and keeps every question it was asked."""

    name = "recorder"
    modality = "image"
    enabled_by_default = False
    asked: ClassVar[list[Question]] = []

    async def answer(self, question: Question) -> AsyncIterator[str]:
        self.asked.append(question)
        yield f"answer to {question.text}"


class RecorderPlugin:
    @hookimpl
    def register_handlers(self, register: Any) -> None:
        register(Recorder)


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def ask(client: Client, text: str | None = None, **response: Any) -> str:
    if text is not None:
        await client.send({"type": "conversation.item.create", "item": user(text)})
        await client.until("conversation.item.done")
    await client.send({"type": "response.create", "response": response})
    done = (await client.until("response.done"))[-1]["response"]
    assert done["status"] == "completed", done
    return str(done["output"][0]["content"][0]["text"])


async def test_out_of_band_answers_do_not_join_the_conversation() -> None:
    Recorder.asked.clear()
    async with running(fake_runtime(handlers=("recorder",),
                                    plugins=(RecorderPlugin(),))) as address:
        client = await Client.connect(address.realtime)
        assert await ask(client, "first", conversation="none") == "answer to first"
        await ask(client, "second")
        await ask(client, "third")
        await client.close()
    history = [(t.role, t.text) for t in Recorder.asked[-1].history]
    # the user's question stays in the conversation; only the out-of-band answer is left out
    assert history == [("user", "first"), ("user", "second"),
                       ("assistant", "answer to second")]


async def test_input_is_the_context_and_the_conversation_waits() -> None:
    Recorder.asked.clear()
    async with running(fake_runtime(handlers=("recorder",),
                                    plugins=(RecorderPlugin(),))) as address:
        client = await Client.connect(address.realtime)
        await client.send({"type": "conversation.item.create", "item": user("pending")})
        await client.until("conversation.item.done")
        context = [{"type": "message", "role": "system",
                    "content": [{"type": "input_text", "text": "be terse"}]},
                   user("earlier"), user("classify this")]
        assert await ask(client, input=context, conversation="none") == \
            "answer to classify this"
        side = Recorder.asked[-1]
        assert side.instructions == "be terse"
        assert [(t.role, t.text) for t in side.history] == [("user", "earlier")]
        assert await ask(client) == "answer to pending"  # the conversation's own text waited
        assert Recorder.asked[-1].history == ()
        await client.send({"type": "response.create", "response": {"input": [{
            "type": "message", "role": "user", "content": [
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]}})
        error = await client.error()
        assert error["param"] == "response.input", error
        await client.send({"type": "response.create", "response": {"conversation": "other"}})
        assert (await client.error())["type"] == "invalid_request_error"
        await client.close()
