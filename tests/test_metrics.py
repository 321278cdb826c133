"""GET /metrics: Prometheus text whose numbers follow what the gateway did."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent.testing import data_url, fake_runtime, image_event, jpeg_bytes
from agent.uvicorn_server import Address, running
from tests.helpers import Client


async def scrape(address: Address) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"{address.http}/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                              if k != "le")
            if "le" in sample.labels:
                continue
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def grew(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


async def test_metrics_follow_sessions_frames_responses_and_errors() -> None:
    async with running(fake_runtime(live=True)) as address:
        before = await scrape(address)
        client = await Client.connect(address.realtime)
        during = await scrape(address)
        assert during["streamagent_sessions"] == 1
        for i in range(3):  # two frames in window 0 (one dropped undecoded), one in window 1
            await client.send(image_event(data_url(jpeg_bytes(str(i))), timestamp=(0, 0.5, 1.2)[i]))
        await client.until("response.done")  # window 0, answered by the live echo handler
        await client.send({"type": "no.such.event"})
        await client.error()
        await client.update(live=False)
        await client.send({"type": "response.create"})
        await client.until("response.done")
        await client.close()
        await asyncio.sleep(0.2)
        after = await scrape(address)
    assert after["streamagent_sessions"] == 0
    assert grew(before, after, "streamagent_frames_received_total") == 3
    assert grew(before, after, "streamagent_frames_dropped_total") == 1
    assert grew(before, after, "streamagent_frames_decoded_total") >= 1
    assert grew(before, after, "streamagent_windows_total") >= 1
    assert grew(before, after, "streamagent_responses_total{status=completed}") >= 2
    assert grew(before, after, "streamagent_errors_total{code=unknown_event}") == 1
    assert grew(before, after, "streamagent_time_to_first_delta_seconds_count{model=fake}") >= 1
    assert "streamagent_queue_depth" in after and "streamagent_handler_drops_total" in after
