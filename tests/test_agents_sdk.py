"""The OpenAI Agents SDK's realtime agent (``RealtimeRunner``, pointed at this server by URL)
gets its answer with no error: every event it parses fits its own models."""

from __future__ import annotations

import asyncio
from typing import Any

from agents.realtime import RealtimeAgent, RealtimeRunner

from agent.testing import fake_runtime
from agent.uvicorn_server import running


async def test_a_realtime_agent_gets_an_answer_without_errors() -> None:
    async with running(fake_runtime(tokens=3)) as address:
        runner = RealtimeRunner(RealtimeAgent(name="looker", instructions="Be brief."),
                                config={"model_settings": {"output_modalities": ["text"]}})
        session = await runner.run(model_config={
            "url": f"{address.ws}/v1/realtime?model=default", "api_key": "any"})
        errors: list[Any] = []
        async with session:
            await session.send_message("hello")

            async def until_the_agent_ends() -> None:
                async for event in session:
                    if event.type == "error" or (event.type == "raw_model_event" and
                                                 event.data.type in ("error", "exception")):
                        errors.append(event)
                    if event.type == "agent_end":
                        return

            await asyncio.wait_for(until_the_agent_ends(), 20)
            answers = [item for item in session._history if item.role == "assistant"]
    assert errors == []
    assert [part.text for part in answers[-1].content] == ["tok0 tok1 tok2 "]
