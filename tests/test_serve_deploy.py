"""docs/deploy-ray.md's commands on one `ray start --head` node (with the node resources
serve_config.cluster.yaml asks for): `serve run serve_config.yaml` from the repo root, asked;
then `serve deploy serve_config.cluster.yaml` over it, `serve status`; then a `serve deploy`
that changes only a model application, timed, while a session stays open. (One Ray cluster for
both files: a cluster start is the slow part.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.testing import data_url, image_event, jpeg_bytes
from tests.helpers import Client, texts
from tests.test_ray import free_port, ray_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def start_head(env: dict[str, str], gcs: int, dashboard: int,
               log: Any) -> subprocess.Popen[bytes]:
    ports = {f"--{name}": str(free_port()) for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port")}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", "--include-dashboard=true", "--num-cpus=4",
           '--resources={"gateway": 4, "models": 4}', "--disable-usage-stats",
           *(f"{k}={v}" for k, v in ports.items())]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """`ray start --block` stops the processes it started when it gets SIGTERM."""
    proc.terminate()
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


async def serve_cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "serve"), *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def apps(dashboard: int) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://127.0.0.1:{dashboard}/api/serve/applications/",
                               timeout=10)
    return dict(reply.json().get("applications") or {})


async def until_running(dashboard: int, changed: tuple[str, ...] = (), after: float = 0.0,
                        limit_s: float = 240) -> float:
    """Seconds until every application is RUNNING, each of ``changed`` deployed after
    ``after``."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        state = await apps(dashboard)
        if state and all(a["status"] == "RUNNING" for a in state.values()) and all(
                name in state and state[name]["last_deployed_time_s"] > after
                for name in changed):
            return time.monotonic() - began
        await asyncio.sleep(0.5)
    raise AssertionError(f"not RUNNING after {limit_s} s: "
                         f"{ {n: a['status'] for n, a in (await apps(dashboard)).items()} }")


async def ask(client: Client) -> str:
    await client.send(image_event(data_url(jpeg_bytes("RAY SERVE", size=(480, 200))),
                                  text="what is written?"))
    await client.send({"type": "response.create"})
    got = await client.until("response.done", timeout=60)
    assert got[-1]["response"]["status"] == "completed", got[-1]
    return "".join(texts(got))


def test_serve_deploy_then_a_model_only_redeploy_keeps_sessions(tmp_path: Path) -> None:
    env = {**os.environ, **ray_env(tmp_path), "PYTHONPATH": str(ROOT),
           "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "agent.ray.proxy:middlewares",
           # SIGTERM stops the head at once: by default it first drains for up to 30 s
           # (meant for a Kubernetes pod that Serve's other nodes route around)
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    gcs, dashboard, port = free_port(), free_port(), free_port()
    config = yaml.safe_load((ROOT / "serve_config.cluster.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)  # tests stay on loopback
    path = tmp_path / "serve_config.cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    with (tmp_path / "ray-start.log").open("wb") as log:
        head = start_head(env, gcs, dashboard, log)
        try:
            asyncio.run(_serve_run(env, gcs, dashboard, port, tmp_path))
            asyncio.run(_deploy_and_redeploy(env, dashboard, port, config, path))
        finally:
            stop(head)


async def _serve_run(env: dict[str, str], gcs: int, dashboard: int, port: int,
                     tmp_path: Path) -> None:
    """`serve run serve_config.yaml` from the repo root (on this head: --non-blocking, so it
    returns once the config is submitted) brings up the embedded models and the gateway."""
    for _ in range(480):  # the dashboard comes up a few seconds after the GCS
        try:
            await apps(dashboard)
            break
        except (httpx.HTTPError, json.JSONDecodeError):
            await asyncio.sleep(0.25)
    text = (ROOT / "serve_config.yaml").read_text()
    assert "port: 8000" in text
    path = tmp_path / "serve_config.yaml"
    path.write_text(text.replace("port: 8000", f"port: {port}"))
    await serve_cli(env, "run", "--non-blocking", "--address", f"127.0.0.1:{gcs}", str(path),
                    cwd=ROOT)
    print(f"serve run: RUNNING after {await until_running(dashboard):.1f} s")
    assert {"ocr", "faces", "asr", "gateway"} <= set(await apps(dashboard))
    client = await Client.connect(f"ws://127.0.0.1:{port}/v1/realtime?model=default")
    assert "RAY SERVE" in await ask(client)
    await client.close()


async def _deploy_and_redeploy(env: dict[str, str], dashboard: int, port: int,
                               config: dict[str, Any], path: Path) -> None:
    """The cluster config over what `serve run` left: Serve replaces every application."""
    address = f"http://127.0.0.1:{dashboard}"
    names = tuple(a["name"] for a in config["applications"])
    before = time.time()
    await serve_cli(env, "deploy", str(path), "--address", address)
    print(f"cluster deploy: RUNNING after {await until_running(dashboard, names, before):.1f} s")
    status = await serve_cli(env, "status", "--address", address)
    assert status.count("status: RUNNING") >= 4, status
    client = await Client.connect(f"ws://127.0.0.1:{port}/v1/realtime?model=default")
    assert "RAY SERVE" in await ask(client)
    ocr = next(a for a in config["applications"] if a["name"] == "ocr")
    ocr["args"]["start_timeout_s"] = 300  # new args: Serve replaces the ocr replicas
    await asyncio.to_thread(path.write_text, yaml.safe_dump(config))
    before = time.time()
    await serve_cli(env, "deploy", str(path), "--address", address)
    seconds = await until_running(dashboard, ("ocr",), before)
    print(f"model-only redeploy: RUNNING after {seconds:.1f} s")
    assert "RAY SERVE" in await ask(client)  # the same socket: the session was not dropped
    await client.close()
