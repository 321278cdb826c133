"""A short soak: every kind of abuse in benchmarks/soak.py for 10 s beside a well-behaved client.

`make soak` runs the same for ten minutes and reports latency and memory; here only what must
hold whatever the machine: every answer right, every session ended, the server healthy and its
task count back where it was."""

from __future__ import annotations

from benchmarks.soak import soak


async def test_a_well_behaved_client_is_answered_through_every_abuse() -> None:
    result = await soak(10)
    assert result["asked"] >= 5, result
    assert result["right"] == result["asked"], result["wrong"]
    assert set(result["abuse_runs"]) == {"response_flood", "idle_sockets", "non_reader",
                                         "oversized", "audio_flood", "chat_bomb",
                                         "hit_and_run"}
    assert result["sessions_after"] == 0, result
    assert result["status_after"] == "ok", result
    assert result["tasks_after"] <= result["tasks_before"] + 2, result
