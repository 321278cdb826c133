"""The Ray Serve pool against a real local Ray cluster started here (one for this module:
tests/test_ray_cluster.py starts its own multi-node one after it)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import ray
import websockets  # a test dependency (`make setup`): a missing one fails, never skips
from ray import serve

from agent.config import Config, ProfileConfig
from agent.engine import ModelRequest
from agent.errors import EngineError
from agent.parts import text_only
from agent.plugins import collect, get_plugin_manager
from agent.ray.pool import RayPool
from agent.ray.replica import ModelServer
from agent.runtime import Runtime
from agent.testing import FakeEngine, FakePlugin, data_url, fake_model, image_event, jpeg_bytes
from agent.uvicorn_server import Address, running
from tests.helpers import Client, endpoint_from, texts

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env(home: Path) -> dict[str, str]:
    """Keep Ray on loopback: a HOME with ray_bootstrap_config.yaml stops its cloud-metadata
    probe (Ray skips the probe when that file exists); usage stats off; auth mode explicit.
    Keep it private: its own RAY_TMPDIR (short: Ray's socket paths must fit 107 bytes), so
    that the cluster address file `ray start` writes there is never found by another
    process's `ray.init()`."""
    (home / "ray_bootstrap_config.yaml").write_text("{}")
    return {"HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "RAY_TMPDIR": tempfile.mkdtemp(prefix="sa-ray-", dir="/tmp")}


def collect_ray_garbage() -> None:
    """After ray.shutdown(): collect what Ray's driver left unclosed (a socket was seen) here,
    so that the garbage collector does not report it later, inside some other test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with pytest.MonkeyPatch.context() as environ:  # restored when the module is done
        for key, value in ray_env(tmp_path_factory.mktemp("rayhome")).items():
            environ.setenv(key, value)
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={
            "enable_access_log": False})
        try:
            yield port
        finally:
            serve.shutdown()
            ray.shutdown()
            collect_ray_garbage()


FAST_SHUTDOWN = {"graceful_shutdown_timeout_s": 1, "graceful_shutdown_wait_loop_s": 0.2}


def deploy_fake(name: str, tries: int | None = None, **options: Any) -> None:
    """``tries``: the replica's starts before Serve fails the deployment (by default 3)."""
    extra: dict[str, Any] = {} if tries is None else {"max_constructor_retry_count": tries}
    app = serve.deployment(ModelServer, name=name, ray_actor_options={"num_cpus": 0},
                           health_check_period_s=1, health_check_timeout_s=5, **FAST_SHUTDOWN,
                           **extra)
    serve.run(app.bind(name, fake_model(**options).model_dump(), FakeEngine), name=name,
              route_prefix=f"/models/{name}")


@pytest.fixture(scope="module")
def fake_models(cluster: int) -> list[str]:
    deploy_fake("fake", tokens=5)
    deploy_fake("slow", tokens=400, delay_s=0.01)
    return ["fake", "slow"]


def ray_runtime(models: list[str], profile: str = "fake") -> Runtime:
    config = Config(profiles={"default": ProfileConfig(handlers=["echo"], live=True,
                                                       models={"echo": profile})})
    registry = collect(get_plugin_manager([FakePlugin()]))
    return Runtime(config, registry, RayPool(models))


@pytest_asyncio.fixture(params=["local", "ray"])
async def pool_server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Address]]:
    if request.param == "ray":
        models = request.getfixturevalue("fake_models")
        runtime = ray_runtime(models)
    else:
        from agent.testing import fake_runtime

        runtime = fake_runtime(live=True)
    async with running(runtime) as address:
        yield request.param, address


async def test_question_and_live_windows_on_both_pools(pool_server: Any) -> None:
    _, address = pool_server
    client = await Client.connect(address.realtime)
    await client.send({"type": "response.create"})
    got = await client.until("response.done")
    assert "".join(texts(got)) == "".join(f"tok{i} " for i in range(5))  # Ray coalesces
    for i in range(3):
        await client.send(image_event(data_url(jpeg_bytes(str(i))), timestamp=i + 0.1))
        await asyncio.sleep(0.1)
    done = [(await client.until("response.done"))[-1]["response"] for _ in range(2)]
    assert [d["metadata"]["window_start_ms"] for d in done] == ["0", "1000"]
    await client.close()


async def test_cancel_reaches_the_replica(fake_models: list[str]) -> None:
    async with running(ray_runtime(fake_models, "slow")) as address:
        client = await Client.connect(address.realtime)
        await client.send({"type": "response.create"})
        await client.until("response.output_text.delta")
        await client.send({"type": "response.cancel"})
        assert (await client.until("response.done"))[-1]["response"]["status"] == "cancelled"
        slow = serve.get_app_handle("slow")
        await asyncio.sleep(0.5)
        first = await slow.stats.remote()
        await asyncio.sleep(0.5)
        second = await slow.stats.remote()
        assert first["generated"] == second["generated"] < 400 and second["active"] == 0
        await client.close()


async def test_replica_killed_mid_stream_fails_fast_then_recovers(
        fake_models: list[str]) -> None:
    deploy_fake("fragile", tokens=100, delay_s=0.02)  # 2 s an answer, each waited out whole
    async with running(ray_runtime([*fake_models, "fragile"], "fragile")) as address:
        client = await Client.connect(address.realtime)
        await client.send({"type": "response.create"})
        await client.until("response.output_text.delta", timeout=30)
        replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                       if "fragile" in a["name"] and "REPLICA" in a["name"])
        killed = time.monotonic()
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]))
        got = await client.until("response.done", timeout=10)
        assert time.monotonic() - killed < 10.0  # the death is seen, not the 60 s deadline
        assert [e for e in got if e["type"] == "error"][0]["error"]["code"] == "engine_error"
        assert got[-1]["response"]["status"] == "failed"
        for _ in range(60):  # Serve replaces the replica; the session stays open
            await client.send({"type": "response.create"})
            done = (await client.until("response.done", timeout=30))[-1]["response"]
            if done["status"] == "completed":
                break
            await asyncio.sleep(0.5)
        assert done["status"] == "completed"
        kill_replica("fragile")  # between requests: the next call is tried once more
        await client.send({"type": "response.create"})
        got = await client.until("response.done", timeout=60)
        assert [e for e in got if e["type"] == "error"] == []
        assert got[-1]["response"]["status"] == "completed"
        await client.close()


def kill_replica(app: str) -> None:
    replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                   if app in a["name"] and "REPLICA" in a["name"])
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]))


def test_a_model_that_fails_to_load_fails_its_deployment(cluster: int) -> None:
    with pytest.raises(RuntimeError, match="Deploying application broken failed"):
        deploy_fake("broken", tries=1, fail_load="weights are corrupt")  # each: seconds
    status = serve.status().applications["broken"]
    message = status.deployments["broken"].message  # what `serve status` shows operators
    assert "model 'broken' failed to load: weights are corrupt" in message
    serve.delete("broken")


async def test_gateway_inside_serve_behind_the_proxy(fake_models: list[str], cluster: int) -> None:
    from agent.ray.apps import gateway_app

    serve.run(gateway_app({"models": ["fake", "slow"], "plugins": ["agent.testing:FakePlugin"],
                           "config": {"server": {"max_message_bytes": 65536}, "profiles": {
        "default": {"handlers": ["echo"], "models": {"echo": "fake"}}}}}), name="gateway",
        route_prefix="/")
    url = f"ws://127.0.0.1:{cluster}/v1/realtime?model=default"
    client = await Client.connect(url)
    await client.send(image_event(data_url(jpeg_bytes("x")), text="hi"))
    await client.send({"type": "response.create"})
    assert "".join(texts(await client.until("response.done"))) == \
        "".join(f"tok{i} " for i in range(5))
    # the gateway's message limit holds behind Serve's proxy too (which allows 16 MiB)
    big = await Client.connect(url)
    with pytest.raises(websockets.ConnectionClosed) as info:
        await big.send({"type": "input_audio_buffer.append", "audio": "A" * 70_000})
        await big.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await client.send({"type": "response.create"})
    assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"
    await client.close()
    serve.delete("gateway")


async def _ask_what_is_written(url: str) -> None:
    client = await Client.connect(url)
    await client.send(image_event(data_url(jpeg_bytes("RAY SERVE", size=(480, 200))),
                                  text="what is written?"))
    await client.send({"type": "response.create"})
    got = await client.until("response.done", timeout=60)
    assert "RAY SERVE" in "".join(texts(got))
    await client.close()


async def test_pictures_cross_packed_and_text_coalesced(fake_models: list[str]) -> None:
    """A request with camera frames reaches the replica packed (JPEG) and unpacked there; a
    fast stream of 400 tokens comes back whole in fewer items."""
    from agent.media import decode_image
    from agent.ray.hop import PackedRequest

    frame = decode_image(data_url(jpeg_bytes("x", size=(1280, 720))).split(",", 1)[1])
    pool = RayPool(fake_models)
    shrunk = await pool._shrink("fake", ModelRequest(images=(frame,), video=(frame,) * 8))
    assert isinstance(shrunk, PackedRequest) and shrunk.nbytes < frame.nbytes
    got = [t async for t in text_only(pool.stream("fake", ModelRequest(
        images=(frame,), options={"tokens": 400, "max_new_tokens": 400})))]
    assert "".join(got) == "".join(f"tok{i} " for i in range(400)) and len(got) < 400
    await pool.close()


async def test_a_function_call_and_usage_cross_the_hop_to_the_realtime_client(
        fake_models: list[str]) -> None:
    """A model's non-text parts reach the protocol over Ray, in order after the coalesced
    text: the call as a function_call item, its token count in the response's usage."""
    deploy_fake("caller", tokens=30, tool_call="alert")
    async with running(ray_runtime([*fake_models, "caller"], profile="caller")) as address:
        client = await Client.connect(f"{address.ws}/v1/realtime?model=default")
        await client.send({"type": "response.create"})
        seen = await client.until("response.done")
        await client.close()
    kinds = [e["type"] for e in seen]
    first_call = kinds.index("response.function_call_arguments.delta")
    assert "response.output_text.delta" not in kinds[first_call:]
    assert "".join(texts(seen)) == "".join(f"tok{i} " for i in range(30))
    response = seen[-1]["response"]
    assert [o["type"] for o in response["output"]] == ["message", "function_call"]
    assert (response["output"][1]["name"], response["output"][1]["arguments"]) == (
        "alert", '{"window": 1}')
    assert response["usage"]["output_tokens"] == 30  # the engine's count, not the hop's items
    serve.delete("caller")


def test_streamagent_serve_with_ray_address(cluster: int, tmp_path: Path) -> None:
    """`streamagent serve --ray-address ADDR` in its own process joins the cluster and streams
    from the Serve model applications; installed plugins' models with no application (asr,
    faces, ...) are left out with a warning instead of failing start-up."""
    from agent.ray.apps import model_app

    serve.run(model_app({"name": "ocr", "model": {"engine": "rapidocr"}}), name="ocr",
              route_prefix="/models/ocr")
    config = tmp_path / "config.yaml"
    config.write_text("profiles:\n  default: {handlers: [text_in_view]}\n")
    address = ray.get_runtime_context().gcs_address
    cmd = [str(Path(sys.executable).with_name("streamagent")), "serve", "--ray-address",
           address, "--config", str(config), "--port", "0"]
    log = tmp_path / "streamagent.log"
    with log.open("w") as errors, subprocess.Popen(
            cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            stderr=errors, text=True) as proc:
        try:
            url = endpoint_from(proc)
            asyncio.run(_ask_what_is_written(url))
        finally:
            proc.terminate()
            proc.communicate(timeout=60)
    err = log.read_text()
    assert "models with no Serve application, not served: ['asr'" in err
    serve.delete("ocr")


async def holders_after_rounds(name: str, model: dict[str, Any],
                               requests: dict[str, ModelRequest], report: str,
                               rounds: int) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Two replicas of ``model``: each request once, a pause while the replicas report what
    they were routed (Serve's long poll), ``rounds`` more of each; then which replicas report
    (in ``where()[report]``) each request's key."""
    app = serve.deployment(ModelServer, name=name, num_replicas=2,
                           ray_actor_options={"num_cpus": 0}, **FAST_SHUTDOWN)
    serve.run(app.bind(name, model, FakeEngine), name=name, route_prefix=f"/models/{name}")
    pool = RayPool([name])
    for i in range(1 + rounds):
        for request in requests.values():
            async for _ in pool.stream(name, request):
                pass
        if i == 0:
            await asyncio.sleep(2)
    handle = serve.get_app_handle(name)
    seen: dict[str, Any] = {}
    for _ in range(60):
        info = await handle.where.remote()
        seen[info["replica"]] = info[report]
        if len(seen) == 2:
            break
    await pool.close()
    serve.delete(name)
    return {key: [r for r, held in seen.items() if key in held] for key in requests}, seen


async def test_lora_requests_stick_to_the_replica_that_has_the_adapter(cluster: int) -> None:
    """Option ``lora`` travels as Serve's multiplexed model id: with two replicas, every
    request for one adapter lands on the replica that served it first."""
    adapters = {"a": "/adapters/a", "b": "/adapters/b"}
    holders, seen = await holders_after_rounds(
        "lora", {"engine": "fake", "options": {"tokens": 1, "lora": adapters}},
        {a: ModelRequest(options={"lora": a}) for a in adapters}, "adapters", rounds=8)
    assert all(len(h) == 1 for h in holders.values()), seen


async def test_a_session_sticks_to_the_replica_that_holds_its_cache(cluster: int) -> None:
    """``session_affinity``: with two replicas, each session's calls land on one of them (its
    prefix cache is there), as Serve's model multiplexing routes them."""
    holders, seen = await holders_after_rounds(
        "sticky", {"engine": "fake", "session_affinity": True, "options": {"tokens": 1}},
        {s: ModelRequest(session=s) for s in ("s0", "s1", "s2", "s3")}, "sessions", rounds=6)
    assert all(len(h) == 1 for h in holders.values()), seen


async def test_a_model_no_node_can_host_fails_at_the_deadline(cluster: int) -> None:
    """A model whose replica cannot be placed anywhere: the call gets engine_error at the
    first-delta deadline instead of waiting in Serve's router for ever."""
    from ray.serve.api import _run

    app = serve.deployment(ModelServer, name="nowhere",
                           ray_actor_options={"num_cpus": 0, "resources": {"no_such_node": 1}},
                           **FAST_SHUTDOWN)
    _run(app.bind("nowhere", {"engine": "fake"}, FakeEngine), _blocking=False, name="nowhere",
         route_prefix="/models/nowhere")
    pool = RayPool(["nowhere"], first_delta_timeout_s=2)
    with pytest.raises(EngineError, match="did not answer within 2 s"):
        async for _ in pool.stream("nowhere", ModelRequest()):
            pass
    await pool.close()
    serve.delete("nowhere")
