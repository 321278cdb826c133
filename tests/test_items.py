"""The conversation's items, as realtime clients manage them: ``conversation.item.delete``
(LiveKit syncing its chat context), ``.retrieve``, and ``.truncate`` (Pipecat and the Agents
SDK on barge-in: the answer keeps what the user heard)."""

from __future__ import annotations

from typing import Any

from agent.testing import fake_runtime
from agent.uvicorn_server import running
from plugins import flite
from tests.helpers import Client

SENTENCES = ["The door is open. ", "A man walks in. ", "He sits down. "]


def user_text(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": {
        "id": item_id, "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]}}


async def test_deleted_items_leave_the_conversation_and_retrieve_shows_the_rest() -> None:
    runtime = fake_runtime(tokens=2)
    fake = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
    async with running(runtime) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        await client.send(user_text("item_a", "forget me"))
        await client.send(user_text("item_b", "keep me"))
        await client.send({"type": "conversation.item.delete", "item_id": "item_a"})
        assert (await client.until("conversation.item.deleted"))[-1]["item_id"] == "item_a"
        await client.send({"type": "conversation.item.retrieve", "item_id": "item_b"})
        item = (await client.until("conversation.item.retrieved"))[-1]["item"]
        assert item["content"] == [{"type": "input_text", "text": "keep me"}]
        await client.send({"type": "response.create"})
        await client.until("response.done")
        assert fake.requests[-1].prompt == "keep me"
        for kind in ("delete", "retrieve"):
            await client.send({"type": f"conversation.item.{kind}", "item_id": "item_a"})
            error = await client.error()
            assert error["param"] == "item_id" and "item_a" in error["message"]
        # an item already in the history goes too: the next question no longer has it
        await client.send({"type": "conversation.item.delete", "item_id": "item_b"})
        await client.until("conversation.item.deleted")
        await client.send(user_text("item_c", "again"))
        await client.send({"type": "response.create"})
        await client.until("response.done")
        assert [t.role for t in fake.requests[-1].history] == ["assistant"]  # no "keep me"
        await client.close()


async def test_truncate_keeps_what_was_heard_of_a_spoken_answer() -> None:
    runtime = fake_runtime(tokens=3, say=SENTENCES, plugins=(flite,))
    fake = runtime.pool.engines["fake"]  # type: ignore[attr-defined]
    async with running(runtime) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        await client.send({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"]}})
        await client.until("session.updated")
        await client.send(user_text("item_q", "what happens?"))
        await client.send({"type": "response.create"})
        done = (await client.until("response.done", timeout=30))[-1]["response"]
        answer = done["output"][0]
        assert answer["content"][0]["transcript"].strip() == "".join(SENTENCES).strip()
        # the user barged in 100 ms into the audio: only the first sentence was heard
        await client.send({"type": "conversation.item.truncate", "item_id": answer["id"],
                           "content_index": 0, "audio_end_ms": 100})
        truncated = (await client.until("conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (answer["id"], 100)
        await client.send(user_text("item_r", "and then?"))
        await client.send({"type": "response.create"})
        await client.until("response.done", timeout=30)
        said = [t.text for t in fake.requests[-1].history if t.role == "assistant"]
        assert said == ["The door is open."]
        await client.send({"type": "conversation.item.truncate", "item_id": "item_q",
                           "content_index": 0, "audio_end_ms": 100})
        assert (await client.error())["param"] == "item_id"
        await client.close()


async def test_a_voice_for_one_response_is_refused_by_name() -> None:
    async with running(fake_runtime(tokens=2, plugins=(flite,))) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        await client.send({"type": "response.create", "response": {
            "audio": {"output": {"voice": "ash"}}}})
        error = await client.error()
        assert error["param"] == "response.audio" and "session.audio.output" in error["message"]
        await client.close()
