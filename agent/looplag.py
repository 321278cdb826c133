"""How late the event loop runs: a probe sleeps ``interval_s`` and measures the overshoot.

Everything on the gateway shares one loop, so CPU work left on it (decoding, a VAD, template
rendering) shows here as lag for every session. ``/healthz`` reports the last minute's worst
and 95th percentile; ``streamagent_event_loop_lag_seconds`` has every probe.
"""

from __future__ import annotations

import asyncio
from collections import deque

from agent import metrics

PROBES = 600  # one minute at the default interval


class LoopLag:
    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.recent: deque[float] = deque(maxlen=PROBES)

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, loop.time() - began - self.interval_s)
            self.recent.append(lag)
            metrics.loop_lag.observe(lag)

    def summary_ms(self) -> dict[str, float]:
        lags = sorted(self.recent)
        if not lags:
            return {"p95": 0.0, "max": 0.0}
        return {"p95": round(1000 * lags[int(0.95 * (len(lags) - 1))], 1),
                "max": round(1000 * lags[-1], 1)}
