"""deploy/kuberay/rayservice.yaml: the RayService against KubeRay's CRD (vendored, trimmed), its
embedded Serve config against Ray's schema and deploy/serve.yaml, its Tessera config against
Tessera's, and the cluster's shape against what the deployments need at their maxima."""

from __future__ import annotations

import copy
import re
from pathlib import Path, PurePosixPath

import pytest
import ray
import yaml

from tessera.serving.config import TesseraConfig
from tests.deploy.capacity import cpu_stage_cpus, gpu_nodes_needed
from tests.deploy.kuberay_schema import check, manifest_documents
from tests.deploy.serve_schema import validate_serve_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFEST = DEPLOY / "kuberay" / "rayservice.yaml"
SCHEMA = yaml.safe_load((Path(__file__).parent / "rayservice_crd_v1.yaml").read_text())
GPU = "nvidia.com/gpu"


@pytest.fixture
def rayservice() -> dict:
    [document] = manifest_documents(MANIFEST, "RayService")
    return document


@pytest.fixture
def tessera_config() -> tuple[str, TesseraConfig]:
    """(the ConfigMap's name, the Tessera config in it)."""
    [config_map] = manifest_documents(MANIFEST, "ConfigMap")
    [(key, text)] = config_map["data"].items()
    assert key == "tessera.yaml"
    return config_map["metadata"]["name"], TesseraConfig.model_validate(yaml.safe_load(text))


def serve_config(rayservice: dict) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def pod_specs(rayservice: dict) -> dict[str, dict]:
    """Pod spec per group: 'head' and each worker group's name."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    specs |= {group["groupName"]: group["template"]["spec"] for group in cluster["workerGroupSpecs"]}
    return specs


def test_the_manifest_matches_the_kuberay_crd(rayservice):
    assert (rayservice["apiVersion"], rayservice["kind"]) == ("ray.io/v1", "RayService")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rayservice["metadata"]["name"])
    assert check(rayservice, SCHEMA) == []


@pytest.mark.parametrize(("change", "problem"), [
    (lambda spec: spec["rayClusterConfig"].update(enableInTreeAutoscalling=True),
     ".spec.rayClusterConfig.enableInTreeAutoscalling: unknown field"),
    (lambda spec: spec["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplicas="10"),
     ".spec.rayClusterConfig.workerGroupSpecs[0].maxReplicas: str '10' where the schema wants integer"),
    (lambda spec: spec["rayClusterConfig"]["authOptions"].update(mode="tokens"),
     ".spec.rayClusterConfig.authOptions.mode: 'tokens' is not one of ['disabled', 'token']"),
    (lambda spec: spec["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"),
     ".spec.rayClusterConfig.workerGroupSpecs[0]: missing required field 'groupName'"),
    (lambda spec: spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0].update(
        containerPort=True), "containers[0].ports[0].containerPort: bool True where the schema wants integer"),
    (lambda spec: spec["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 4}),
     ".spec.rayClusterConfig.headGroupSpec.rayStartParams.num-cpus: int 4 where the schema wants string"),
])
def test_the_checker_refuses_what_the_api_server_would_drop_or_reject(rayservice, change, problem):
    broken = copy.deepcopy(rayservice)
    change(broken["spec"])
    problems = check(broken, SCHEMA)
    assert len(problems) == 1 and problem in problems[0], problems


def test_the_embedded_serve_config_is_deploy_serve_yaml_on_the_pod_network(rayservice):
    embedded = serve_config(rayservice)
    validate_serve_config(embedded)
    shipped = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    # The two differences: KubeRay's Service and readiness probes reach the HTTP proxy at the pod's
    # IP, and the Tessera config comes from the ConfigMap.
    assert embedded["http_options"].pop("host") == "0.0.0.0"
    shipped["http_options"].pop("host")
    assert embedded["applications"][0].pop("args") == {"config": "/etc/tessera/tessera.yaml"}
    shipped["applications"][0].pop("args")
    assert embedded == shipped


def test_every_pod_mounts_the_tessera_config_where_serve_reads_it(rayservice, tessera_config):
    config_map, config = tessera_config
    path = PurePosixPath(serve_config(rayservice)["applications"][0]["args"]["config"])
    for group, spec in pod_specs(rayservice).items():
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        [container] = spec["containers"]
        [mount] = [mount for mount in container["volumeMounts"] if mount["mountPath"] == str(path.parent)]
        assert volumes[mount["name"]]["configMap"]["name"] == config_map, group
    embedded = serve_config(rayservice)
    assert (config.grpc.port, config.http.port) == (embedded["grpc_options"]["port"], embedded["http_options"]["port"])
    assert config.app_name == embedded["applications"][0]["name"]
    assert config.auth.enabled, "keys are required on a cluster too"


def test_the_cluster_is_a_cpu_head_and_an_autoscaled_gpu_group(rayservice, tessera_config):
    _, config = tessera_config
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"]["mode"] == "token", "Ray token auth stays on"
    assert cluster["rayVersion"] == ray.__version__, "the Ray in the image is the one pinned in pyproject.toml"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert GPU not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    [gpu_group] = cluster["workerGroupSpecs"]
    resources = gpu_group["template"]["spec"]["containers"][0]["resources"]
    assert int(resources["limits"][GPU]) >= 1 and resources["requests"][GPU] == resources["limits"][GPU]
    assert 0 < gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    images = {spec["containers"][0]["image"] for spec in pod_specs(rayservice).values()}
    assert len(images) == 1, "one image for every node: the same Tessera and Ray everywhere"
    for group, spec in pod_specs(rayservice).items():
        ports = {port["name"]: port["containerPort"] for port in spec["containers"][0]["ports"]}
        # KubeRay's serve Service takes the ports named serve and serve-*; its probes check "serve".
        assert (ports["serve"], ports["serve-grpc"]) == (config.http.port, config.grpc.port), group


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("16", "500m") in CPUs."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_the_pods_hold_every_deployment_at_its_maximum(rayservice, tessera_config):
    _, config = tessera_config
    cluster = rayservice["spec"]["rayClusterConfig"]
    [gpu_group] = cluster["workerGroupSpecs"]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    needed = gpu_nodes_needed(config, node_cpus=cpus(limits["cpu"]), node_gpus=float(limits[GPU]))
    assert needed <= gpu_group["maxReplicas"], f"{needed} GPU pods needed at the maxima"
    head_cpus = cpus(cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert cpu_stage_cpus(config) <= head_cpus, f"the CPU stages need {cpu_stage_cpus(config)} CPUs, the head has {head_cpus}"
