"""``streamagent caption --ray`` on Ray's own multi-node harness (``ray.cluster_utils.Cluster``,
on loopback): a head node and two worker nodes with a ``caption_slot`` each can host a model
actor; one worker is removed mid-run, and after a rerun (the resume) every image has exactly
one caption. The actors run ``agent.testing.FakeEngine`` (registered by ``FakePlugin``)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from agent.caption import CaptionAsk, CaptionRun
from agent.caption_ray import RayOptions, caption_on_ray
from agent.caption_sinks import open_sink
from agent.config import ModelConfig
from tests.test_caption_batch import images
from tests.test_ray import collect_ray_garbage, ray_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[1]
SLOT = {"caption_slot": 2}
"""Per worker node: room for a second actor, where a lost node's actor is restarted."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {**ray_env(tmp_path_factory.mktemp("rayhome")),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every address on 127.0.0.1
           "RAY_timeout_ms_task_wait_for_death_info": "200",  # a lost node's calls fail fast
           # a killed node is declared dead after ~1.5 s, not ~15 s (GCS health checks)
           "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
           "RAY_health_check_failure_threshold": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    with pytest.MonkeyPatch.context() as environ:
        for key, value in env.items():
            environ.setenv(key, value)
        nodes = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
        for _ in range(2):
            nodes.add_node(num_cpus=1, resources=SLOT, node_ip_address="127.0.0.1")
        ray.init(address=nodes.address, log_to_driver=False)
        try:
            yield nodes
        finally:
            ray.shutdown()
            nodes.shutdown()
            collect_ray_garbage()


OPTIONS = RayOptions(actors=2, num_cpus=0, batch_size=8, concurrency=4, progress=False,
                     plugins=("agent.testing:FakePlugin",),
                     resources={"caption_slot": 1})  # Ray Data spreads actors over nodes
MODEL = ModelConfig(engine="fake", options={"tokens": 2, "delay_s": 0.02})


def run(folder: Path, out: Path) -> CaptionRun:
    sink = open_sink("jsonl", folder, out, track=True)
    return caption_on_ray(folder, sink, CaptionAsk(prefix="ohwx, "), "fake", MODEL, OPTIONS)


def written(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [json.loads(line)["file_name"] for line in out.read_text().splitlines()
            if line.endswith("}")]


def test_a_worker_node_lost_mid_run_then_a_resume_captions_every_image_once(
        cluster: Cluster, tmp_path: Path) -> None:
    folder, out = tmp_path / "images", tmp_path / "captions.jsonl"
    keys = images(folder, 96)
    first: list[CaptionRun | BaseException] = []

    def go() -> None:
        try:
            first.append(run(folder, out))
        except BaseException as exc:  # the node loss may fail the run: the resume finishes
            first.append(exc)

    driver = threading.Thread(target=go)
    driver.start()
    try:
        deadline = time.monotonic() + 90
        while len(written(out)) < 16:  # Cluster.remove_node works only from the main thread
            assert driver.is_alive() and time.monotonic() < deadline, first
            time.sleep(0.05)
        at_removal = len(written(out))
        cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)
    finally:  # Ray Data's executor must be done before the cluster goes
        driver.join(120)
    assert not driver.is_alive()
    before = written(out)
    assert at_removal < len(keys)  # mid-run
    print(f"first run: {first[0]!r}, {len(before)} captions")
    again = run(folder, out)
    got = written(out)
    assert sorted(got) == sorted(keys)  # every image, once
    assert again.done == len(keys) - len(before) and again.errors == 1  # broken.jpg
    assert {json.loads(line)["text"][:6] for line in out.read_text().splitlines()} == {"ohwx, "}
