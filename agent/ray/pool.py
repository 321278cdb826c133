"""The gateway's side of the model pool on Ray Serve: ``RayPool``, the ``Pool`` interface over
the deployment handles of the model applications (``options(stream=True)``), one per model,
named after it. The replicas behind them are ``agent.ray.replica.ModelServer``; pictures cross
packed (``agent.ray.hop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from typing import Any

import ray.exceptions
from ray import serve

from agent.engine import ModelRequest
from agent.errors import EngineError, UnknownModel
from agent.parts import Part
from agent.pool import Pool
from agent.ray.hop import PackedRequest, has_pictures, pack
from agent.ray.replica import SESSION

log = logging.getLogger(__name__)
REPLICA_LOST = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError,
                ray.exceptions.WorkerCrashedError)
"""A call failed because its replica is gone, not because the model failed."""
HEALTH_TIMEOUT_S = 5.0
"""A health ping that takes longer counts as a failure."""
HEALTH_WAIT_S = 0.2
"""``/healthz`` waits at most this long for a probe in flight, then answers what it knows."""
READY_POLL_S = 0.5
"""A live call waiting past ``live_wait_s`` asks again this often whether its model has a
running replica (one question to Serve's controller at a time, shared by every call)."""
STATUS_WAIT_S = 1.0
"""An answer from Serve's controller older than this, or slower, counts as unknown."""


class RayPool(Pool):
    """Streams from Serve applications, one per model, named after the model.

    Handles are got once, here (getting one asks the Serve controller, and blocks). Every call
    has a deadline for its first delta (``first_delta_timeout_s``): while no replica can take it
    (a node lost, the model being rescheduled) the client gets an ``engine_error`` instead of a
    silent wait. A live window's call is told sooner: once it has waited ``live_wait_s``, it
    fails as soon as Serve shows no running replica of its model (Serve's router, which holds
    the call, would wait for a replacement however long that takes). While one runs, the call
    waits its turn. Health is probed in the background and cached (``health()`` never waits on
    Ray for longer than ``HEALTH_WAIT_S``).
    """

    def __init__(self, names: list[str], first_delta_timeout_s: float = 60.0,
                 health_period_s: float = 2.0, jpeg_quality: int = 90,
                 live_wait_s: float = 1.0) -> None:
        self._names = sorted(names)
        apps = {name: serve.get_app_handle(name) for name in names}
        self.handles = {name: h.options(stream=True) for name, h in apps.items()}
        self.probes = apps
        self.first_delta_timeout_s = first_delta_timeout_s
        self.health_period_s = health_period_s
        self._healthy: dict[str, float] = {}
        """Model -> monotonic time of its last good ping."""
        self._probe: asyncio.Task[None] | None = None
        self._probed_at = -1e9
        self.jpeg_quality = jpeg_quality
        """Pictures cross to replicas as JPEG of this quality (0: as raw pixels)."""
        self._limits: dict[str, dict[str, Any]] = {}
        self.live_wait_s = live_wait_s
        self.replicas = ServeReplicas()

    @property
    def names(self) -> list[str]:
        return self._names

    async def stream(self, model: str, request: ModelRequest) -> AsyncGenerator[Part, None]:
        handle = self.handles.get(model)
        if handle is None:
            raise UnknownModel(f"no model named {model!r}; the pool has {self.names}")
        lora = request.options.get("lora")
        if lora:  # LoRA adapters are multiplexed: Serve routes to a replica that has it
            handle = handle.options(multiplexed_model_id=str(lora))
        elif request.session and (await self._limits_of(model, request.live)).get("affinity"):
            # to the replica that holds the session's prefix cache
            handle = handle.options(multiplexed_model_id=SESSION + request.session)
        gen, first = await self._first(model, handle, await self._shrink(model, request),
                                       request.live)
        if gen is None:
            return
        try:
            for part in first:
                yield part
            async for batch in gen:
                for part in batch:
                    yield part
        except (ray.exceptions.RayError, RuntimeError) as exc:
            raise EngineError(f"model {model!r} failed: {_reason(exc)}") from exc
        finally:
            gen.cancel()  # reaches the replica, which closes the engine's stream

    async def _first(self, model: str, handle: Any, request: ModelRequest | PackedRequest,
                     live: bool) -> tuple[Any, Any]:
        """Start the call and wait for its first part, within ``first_delta_timeout_s``. A
        replica lost before it said anything (its node gone, its process dead) is tried once
        more, on whichever replica Serve routes to within what is left of the deadline; nothing
        was shown, so nothing is repeated. ``(None, None)``: the answer was empty."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.first_delta_timeout_s
        for attempt in (1, 2):
            gen: Any = handle.generate.remote(request)
            try:
                return gen, await self._within(model, anext(gen), deadline, live)
            except StopAsyncIteration:
                gen.cancel()
                return None, None
            except TimeoutError:
                gen.cancel()
                raise self._late(model) from None
            except (ray.exceptions.RayError, RuntimeError) as exc:
                gen.cancel()
                if attempt == 2 or not isinstance(exc, REPLICA_LOST):
                    raise EngineError(f"model {model!r} failed: {_reason(exc)}") from exc
                log.warning("model %s: its replica was lost before it answered (%s); trying "
                            "once more", model, _reason(exc))
            except BaseException:
                gen.cancel()
                raise
        raise AssertionError("unreachable")

    async def _within(self, model: str, call: Awaitable[Any], deadline: float, live: bool,
                      ) -> Any:
        """What ``call`` (to ``model``) gives, by ``deadline`` (``TimeoutError`` past it). A
        live call that has waited ``live_wait_s`` (nothing, while Serve is known to run no
        replica of ``model``) fails (``EngineError``) once Serve shows none running; asked
        again every ``ServeReplicas.poll_s``, an unknown answer waits on."""
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(call)
        try:
            wake = deadline
            if live:
                wake = loop.time() + (0 if self.replicas.known(model) == 0 else self.live_wait_s)
            while True:
                wake = min(wake, deadline)
                done, _ = await asyncio.wait({first}, timeout=max(0.0, wake - loop.time()))
                if done:
                    return first.result()
                if wake >= deadline:
                    raise TimeoutError
                if await self.replicas.running(model) == 0:
                    raise EngineError(f"model {model!r} has no running replica: its node was "
                                      "lost, or it is restarting")
                wake = loop.time() + self.replicas.poll_s
        finally:
            _discard(first)

    def _late(self, model: str) -> EngineError:
        return EngineError(f"model {model!r} did not answer within "
                           f"{self.first_delta_timeout_s:g} s (no replica ready?)")

    async def _shrink(self, model: str, request: ModelRequest) -> ModelRequest | PackedRequest:
        """Pictures downscaled to the model's budget and JPEG-encoded, off the event loop."""
        if not self.jpeg_quality or not has_pictures(request):
            return request
        max_pixels = (await self._limits_of(model, request.live)).get("max_pixels")
        return await asyncio.to_thread(pack, request, max_pixels, self.jpeg_quality)

    async def _limits_of(self, model: str, live: bool) -> dict[str, Any]:
        """What a replica of ``model`` says of it (its pixel budget, whether sessions stick),
        asked once."""
        if model not in self._limits:
            deadline = asyncio.get_running_loop().time() + self.first_delta_timeout_s
            try:
                limits = await self._within(model, self.probes[model].limits.remote(), deadline,
                                            live)
            except EngineError:
                raise
            except TimeoutError:
                raise self._late(model) from None
            except Exception as exc:
                raise EngineError(f"model {model!r} failed: {_reason(exc)}") from exc
            self._limits[model] = dict(limits)
        return self._limits[model]

    async def health(self) -> dict[str, bool]:
        """A model is healthy when its replicas answered a ping within three probe periods.

        Probes run in a background task, at most one per ``health_period_s``; this waits for a
        running probe at most ``HEALTH_WAIT_S``, so it answers at once even when the Serve
        controller or a model is unreachable."""
        now = time.monotonic()
        if (self._probe is None or self._probe.done()) and \
                now - self._probed_at >= self.health_period_s:
            self._probed_at = now
            self._probe = asyncio.create_task(self._probe_all(), name="ray-health")
        if self._probe is not None and not self._probe.done():
            await asyncio.wait({self._probe}, timeout=HEALTH_WAIT_S)
        fresh = time.monotonic() - 3 * max(self.health_period_s, HEALTH_TIMEOUT_S)
        return {n: self._healthy.get(n, -1e9) >= fresh for n in self._names}

    async def _probe_all(self) -> None:
        async def one(name: str) -> None:
            try:
                ok = await asyncio.wait_for(self.probes[name].ping.remote(), HEALTH_TIMEOUT_S)
            except Exception as exc:  # logged when a healthy model turns unhealthy
                was = self._healthy.pop(name, None)
                (log.warning if was else log.debug)("model %s failed its health ping: %s",
                                                    name, _reason(exc))
                return
            if ok:
                self._healthy[name] = time.monotonic()

        await asyncio.gather(*(one(n) for n in self._names))

    async def close(self) -> None:
        await self.replicas.close()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


class ServeReplicas:
    """How many replicas of each model Serve's controller shows running (``serve.status()``,
    a public API; the router that holds a call keeps its own view private). Asked in the
    background, at most once per ``poll_s``, one question at a time."""

    def __init__(self, poll_s: float = READY_POLL_S) -> None:
        self.poll_s = poll_s
        self._running: dict[str, int] = {}
        self._answered_at = -1e9
        self._asked_at = -1e9
        self._asking: asyncio.Task[None] | None = None
        self._failed = False

    async def running(self, model: str) -> int | None:
        """Replicas of ``model`` running, as the controller said within ``STATUS_WAIT_S``
        (waiting at most that long for it); ``None``: unknown (no app of that name, or the
        controller is slow or gone)."""
        if (self._asking is None or self._asking.done()) and \
                time.monotonic() - self._asked_at >= self.poll_s:
            self._asked_at = time.monotonic()
            self._asking = asyncio.create_task(self._ask(), name="serve-status")
        if self._asking is not None and not self._asking.done():
            await asyncio.wait({self._asking}, timeout=STATUS_WAIT_S)
        return self.known(model)

    def known(self, model: str) -> int | None:
        """What ``running`` last learnt, if it is recent; asks nothing."""
        if time.monotonic() - self._answered_at > STATUS_WAIT_S + self.poll_s:
            return None
        return self._running.get(model)

    async def _ask(self) -> None:
        try:  # a thread: the controller's answer is a blocking ray.get
            status = await asyncio.to_thread(serve.status)
        except Exception as exc:  # logged once until it answers again
            (log.debug if self._failed else log.warning)(
                "Serve's controller did not say which replicas run: %s", _reason(exc))
            self._failed = True
            return
        self._failed = False
        self._running = {name: max((n for d in app.deployments.values()
                                    for state, n in d.replica_states.items()
                                    if state == "RUNNING"), default=0)
                         for name, app in status.applications.items()}
        self._answered_at = time.monotonic()

    async def close(self) -> None:
        if self._asking is not None:
            self._asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asking


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it runs; mark its outcome seen (it was raised, or it lost the race to
    a failure of the caller's own), now or when it ends: a cancelled Serve call ends with
    Serve's own ``RequestCancelledError``, which asyncio would log as never retrieved."""
    if task.done():
        _seen(task)
    else:
        task.cancel()
        task.add_done_callback(_seen)


def _seen(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
