"""The deployment files as written: serve configs, the KubeRay RayService manifest, and that
their autoscaling fits the nodes they may use (no cluster needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from agent.plugins import collect, get_plugin_manager
from agent.ray.apps import GatewayAppArgs, ModelAppArgs

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "rayservice.yaml"


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_ANY = {"type": "object"}
_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {"spec": {
    "type": "object", "required": ["containers"], "properties": {"containers": {
        "type": "array", "minItems": 1, "items": {"type": "object",
                                                  "required": ["name", "image"]}}}}}}
_WORKER = _obj({"groupName": {"type": "string"}, "replicas": {"type": "integer"},
                "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
                "rayStartParams": _STR_MAP, "template": _TEMPLATE,
                "idleTimeoutSeconds": {"type": "integer"}},
               ("groupName", "maxReplicas", "minReplicas", "template"))
RAYSERVICE_SUBSET = _obj({
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayService"},
    "metadata": {"type": "object", "required": ["name"]},
    "spec": _obj({
        "serveConfigV2": {"type": "string"},
        "serviceUnhealthySecondThreshold": {"type": "integer"},
        "deploymentUnhealthySecondThreshold": {"type": "integer"},
        "rayClusterConfig": _obj({
            "rayVersion": {"type": "string"},
            "enableInTreeAutoscaling": {"type": "boolean"},
            "autoscalerOptions": _obj({"upscalingMode": {"enum": [
                "Default", "Aggressive", "Conservative"]},
                "idleTimeoutSeconds": {"type": "integer"}}),
            "headGroupSpec": _obj({"serviceType": {"type": "string"},
                                   "rayStartParams": _STR_MAP, "template": _TEMPLATE},
                                  ("template",)),
            "workerGroupSpecs": {"type": "array", "items": _WORKER},
        }, ("headGroupSpec",)),
    }),
}, ("apiVersion", "kind", "metadata", "spec"))
"""The fields of the RayService v1 CRD (ray-project/kuberay,
ray-operator/config/crd/bases/ray.io_rayservices.yaml) that the manifest uses, with the CRD's
types and required fields; anything else is refused, so a misspelt field fails here."""


def manifest() -> dict[str, Any]:
    return dict(yaml.safe_load(MANIFEST.read_text()))


def serve_configs() -> dict[str, dict[str, Any]]:
    return {"serve_config.yaml": yaml.safe_load((ROOT / "serve_config.yaml").read_text()),
            "serve_config.cluster.yaml":
                yaml.safe_load((ROOT / "serve_config.cluster.yaml").read_text()),
            "rayservice serveConfigV2": yaml.safe_load(manifest()["spec"]["serveConfigV2"])}


@pytest.mark.parametrize("name", list(serve_configs()))
def test_serve_configs_validate_with_ray_and_our_args(name: str) -> None:
    config = serve_configs()[name]
    ServeDeploySchema.model_validate(config)
    engines = collect(get_plugin_manager()).engines
    models, gateway = [], None
    for app in config["applications"]:
        if app["import_path"] == "agent.ray.apps:model_app":
            args = ModelAppArgs.model_validate(app["args"])
            assert args.name == app["name"] == app["deployments"][0]["name"]
            assert args.model.engine in engines, args.model.engine
            models.append(args.name)
        else:
            assert app["import_path"] == "agent.ray.apps:gateway_app"
            gateway = GatewayAppArgs.model_validate(app["args"])
            deployment = app["deployments"][0]
            assert deployment["max_ongoing_requests"] > gateway.config.server.max_sessions
    assert gateway is not None and sorted(gateway.models) == sorted(models)


def test_cluster_config_listens_on_every_node() -> None:
    cluster = serve_configs()["serve_config.cluster.yaml"]
    assert cluster["proxy_location"] == "EveryNode"
    assert cluster["http_options"]["host"] == "0.0.0.0"
    assert cluster["http_options"]["request_timeout_s"] is None


def test_manifest_uses_only_rayservice_fields() -> None:
    jsonschema.validate(manifest(), RAYSERVICE_SUBSET)
    cluster = manifest()["spec"]["rayClusterConfig"]
    import ray

    assert cluster["rayVersion"] == ray.__version__  # the Ray the image installs
    ports = {p["containerPort"] for p in
             cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265, 8000} <= ports


def test_manifest_serves_the_cluster_config_plus_a_gpu_model() -> None:
    cluster = {a["name"]: a for a in serve_configs()["serve_config.cluster.yaml"][
        "applications"]}
    kube = {a["name"]: a for a in serve_configs()["rayservice serveConfigV2"]["applications"]}
    assert set(kube) - set(cluster) == {"qwen"}
    for name, app in cluster.items():
        if name != "gateway":
            assert kube[name] == app, name


def _node_resources(params: dict[str, str], container: dict[str, Any]) -> dict[str, float]:
    limits = container["resources"]["limits"]
    out = {"CPU": float(params.get("num-cpus", limits["cpu"])),
           "GPU": float(limits.get("nvidia.com/gpu", 0))}
    if "resources" in params:  # KubeRay's quoting: '"{\"name\": n}"'
        out.update(json.loads(json.loads(params["resources"])))
    return out


def _needs(deployment: dict[str, Any]) -> tuple[dict[str, float], int]:
    opts = deployment.get("ray_actor_options", {})
    need = {"CPU": float(opts.get("num_cpus", 1)), "GPU": float(opts.get("num_gpus", 0)),
            **{k: float(v) for k, v in opts.get("resources", {}).items()}}
    auto = deployment.get("autoscaling_config")
    return need, int(auto["max_replicas"] if auto else deployment.get("num_replicas", 1))


def test_autoscaling_fits_the_worker_groups() -> None:
    """Every deployment at max_replicas fits the largest cluster KubeRay may build, on the
    groups that offer what it asks for."""
    cluster = manifest()["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    groups = {"head": (_node_resources(head["rayStartParams"],
                                       head["template"]["spec"]["containers"][0]), 1)}
    for g in cluster["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        groups[g["groupName"]] = (_node_resources(g["rayStartParams"],
                                                  g["template"]["spec"]["containers"][0]),
                                  g["maxReplicas"])
    used: dict[str, dict[str, float]] = {g: {} for g in groups}
    for app in serve_configs()["rayservice serveConfigV2"]["applications"]:
        for deployment in app["deployments"]:
            need, replicas = _needs(deployment)
            special = [k for k, v in need.items() if k != "CPU" and v > 0]
            fits = [g for g, (res, _) in groups.items()
                    if all(res.get(k, 0) >= v for k, v in need.items())
                    and all(res.get(k, 0) > 0 for k in special)]
            assert fits, f"{app['name']}: no group offers {need}"
            group = fits[0]
            for k, v in need.items():
                used[group][k] = used[group].get(k, 0) + v * replicas
    for group, (res, count) in groups.items():
        for k, v in used[group].items():
            assert v <= res.get(k, 0) * count, f"group {group}: {k} {v} > {res.get(k)}x{count}"


def test_tensor_parallel_vllm_gets_a_placement_group() -> None:
    from agent.ray.apps import model_app

    def options(model: dict[str, Any]) -> Any:
        deployment = model_app({"name": "m", "model": model})._bound_deployment
        return deployment.ray_actor_options, deployment._replica_config

    qwen = {"engine": "vllm", "family": "qwen2-vl", "source": "Qwen/Qwen2-VL-72B-Instruct"}
    actor, replica = options({**qwen, "options": {"tensor_parallel_size": 4}})
    assert replica.placement_group_bundles == [{"CPU": 1, "GPU": 0}] + [{"GPU": 1}] * 4
    assert replica.placement_group_strategy == "STRICT_PACK"
    assert actor["num_gpus"] == 0  # the replica's own bundle: its GPUs are vLLM's workers'
    for model in (qwen, {"engine": "transformers", "options": {"tensor_parallel_size": 4}}):
        assert options(model)[1].placement_group_bundles is None
