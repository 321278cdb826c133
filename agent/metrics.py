"""Prometheus metrics of the gateway: ``GET /metrics``, and Ray's own metrics on a cluster.

Every metric is a module-level object with ``inc``/``set``/``observe``; labels as keywords::

    metrics.frames_received.inc()
    metrics.responses.inc(status="completed")

They live in one ``prometheus_client`` registry (``REGISTRY``, served by ``/metrics``), beside the
process's own figures (``process_*``: CPU, memory, open files; ``python_gc_*``). Inside a
Ray Serve replica, ``enable_ray()`` mirrors them to ``ray.util.metrics``, so that they reach
Ray's Prometheus export (and Grafana) with the ``ray_`` prefix. Names: docs/config.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import prometheus_client as prom

from agent.parts import Usage

T = TypeVar("T")
REGISTRY = prom.CollectorRegistry(auto_describe=True)
prom.ProcessCollector(registry=REGISTRY)  # Linux (it reads /proc); nothing elsewhere
prom.GCCollector(registry=REGISTRY)
FIRST_DELTA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUEUE_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ALL: list[_Metric] = []


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = (), **extra: Any) -> None:
        self.name, self.doc, self.labels, self.extra = name, doc, labels, extra
        cls = {"counter": prom.Counter, "gauge": prom.Gauge, "histogram": prom.Histogram}
        self.prom: Any = cls[self.kind](name, doc, labels, registry=REGISTRY, **extra)
        self.ray: Any = None
        _ALL.append(self)

    def _child(self, labels: dict[str, str]) -> Any:
        return self.prom.labels(**labels) if labels else self.prom

    def _tags(self, labels: dict[str, str]) -> dict[str, str] | None:
        return labels or None


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)
        if self.ray is not None:
            self.ray.inc(amount, tags=self._tags(labels))


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)
        if self.ray is not None:
            self.ray.set(value, tags=self._tags(labels))


class Histogram(_Metric):
    kind = "histogram"

    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)
        if self.ray is not None:
            self.ray.observe(value, tags=self._tags(labels))


sessions = Gauge("streamagent_sessions", "Open realtime sessions")
windows = Counter("streamagent_windows", "Windows the samplers closed")
frames_received = Counter("streamagent_frames_received", "Frames accepted from clients")
frames_decoded = Counter("streamagent_frames_decoded", "Frames decoded (by a handler)")
frames_dropped = Counter("streamagent_frames_dropped",
                         "Frames replaced by a newer one in the same window, never decoded")
handler_drops = Counter("streamagent_handler_drops",
                        "Windows a busy live handler skipped (latest wins)")
responses = Counter("streamagent_responses", "Responses finished, by status", ("status",))
errors = Counter("streamagent_errors", "Error events sent to clients, by code", ("code",))
first_delta = Histogram("streamagent_time_to_first_delta_seconds",
                        "From a model call to its first text delta, by model", ("model",),
                        buckets=FIRST_DELTA_BUCKETS)
loop_lag = Histogram("streamagent_event_loop_lag_seconds",
                     "How late the gateway's event loop ran a 100 ms timer",
                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
queue_depth = Gauge("streamagent_queue_depth",
                    "Events waiting in the sessions' outboxes, all sessions together")
model_queue_depth = Gauge("streamagent_model_queue_depth",
                          "Requests waiting for a worker of a model, by model", ("model",))
model_queue_wait = Histogram("streamagent_model_queue_wait_seconds",
                             "From a request asking for a model's worker to getting one (0 when "
                             "one was free), by model", ("model",), buckets=QUEUE_WAIT_BUCKETS)
prompt_tokens = Counter("streamagent_prompt_tokens",
                        "Prompt tokens of model calls, as their engines counted them, by model",
                        ("model",))
completion_tokens = Counter("streamagent_completion_tokens",
                            "Tokens models generated, as their engines counted them, by model",
                            ("model",))


async def timed(model: str, stream: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """``stream``, observing ``first_delta`` (its first part) for ``model`` and counting the
    tokens of its ``Usage``; closing this closes ``stream``."""
    began = time.perf_counter()
    first = True
    try:
        async for part in stream:
            if first:
                first_delta.observe(time.perf_counter() - began, model=model)
                first = False
            if isinstance(part, Usage):
                count_tokens(model, part)
            yield part
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def count_tokens(model: str, usage: Usage) -> None:
    if usage.prompt_tokens:
        prompt_tokens.inc(usage.prompt_tokens, model=model)
    if usage.completion_tokens:
        completion_tokens.inc(usage.completion_tokens, model=model)


def exposition() -> tuple[bytes, str]:
    """The body and content type of ``GET /metrics``."""
    return prom.generate_latest(REGISTRY), prom.CONTENT_TYPE_LATEST


def enable_ray() -> None:
    """Mirror every metric to ``ray.util.metrics`` (call inside a Ray worker)."""
    from ray.util import metrics as ray_metrics

    for m in _ALL:
        if m.ray is not None:
            continue
        if isinstance(m, Counter):
            m.ray = ray_metrics.Counter(m.name, m.doc, tag_keys=m.labels)
        elif isinstance(m, Gauge):
            m.ray = ray_metrics.Gauge(m.name, m.doc, tag_keys=m.labels)
        elif isinstance(m, Histogram):
            m.ray = ray_metrics.Histogram(m.name, m.doc, list(m.extra["buckets"]),
                                          tag_keys=m.labels)
