"""The shipped overlays render, validate strictly and pass the kit's policy checks."""

from __future__ import annotations

import copy
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.k8s.model import Obj, by_kind, find, image_repo, selector_matches
from tests.k8s.render import render
from tests.k8s.validate import main, validate

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "k8s" / "overlays"
NAMES = ["inmemory", "ipc", "local-redis", "redis-sharded"]
COMPONENTS = ROOT / "k8s" / "components"
INSTANCE = re.compile(r"^ *app\.kubernetes\.io/instance: .*\n", re.MULTILINE)
GENERATED = re.compile(r"\b(layer-env|redis-auth)-[a-z0-9]{10}\b")  # kustomize's hash suffix


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(OVERLAYS / name) for name in NAMES}


def test_the_four_topologies_exist() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir()) == NAMES
    assert sorted(p.name for p in COMPONENTS.iterdir()) == [
        "django-chat",
        "ipc-pod",
        "namespace",
        "redis-shards",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_overlay_passes_schema_and_policy(name: str) -> None:
    assert validate(OVERLAYS / name) == []


def test_validate_command_exit_codes() -> None:
    assert main([str(OVERLAYS / "inmemory")]) == 0
    assert main([str(ROOT / "tests/k8s/fixtures/missing-probe")]) == 1


def _workloads(objects: list[Obj]) -> dict[str, Obj]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o
        for o in objects
        if "template" in o.get("spec", {})
    }


def _roles(workload: Obj) -> list[str]:
    return [c["args"][0] for c in workload["spec"]["template"]["spec"]["containers"]]


def test_redis_sharded_shape(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["redis-sharded"]
    assert set(_workloads(objects)) == {
        "Deployment/protocol",
        "Deployment/worker",
        "StatefulSet/redis",
    }
    sts = find(objects, "StatefulSet", "redis")
    assert sts is not None and sts["spec"]["replicas"] == 3
    assert "volumeClaimTemplates" not in sts["spec"]  # no persistence, by design
    assert find(objects, "Service", "redis")["spec"]["clusterIP"] == "None"  # type: ignore[index]
    assert [
        h["spec"]["scaleTargetRef"]["name"] for h in by_kind(objects, "HorizontalPodAutoscaler")
    ] == ["worker"]
    assert sorted(p["metadata"]["name"] for p in by_kind(objects, "PodDisruptionBudget")) == [
        "protocol",
        "redis",
        "worker",
    ]
    assert sorted(n["metadata"]["name"] for n in by_kind(objects, "NetworkPolicy")) == [
        "default-deny",
        "dns",
        "http",
        "redis",
        "redis-clients",
    ]


def test_ipc_shape(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["ipc"]
    (pod,) = _workloads(objects).values()
    assert pod["kind"] == "Deployment" and _roles(pod) == ["protocol", "worker"]
    shm = next(v for v in pod["spec"]["template"]["spec"]["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]


def _shards(objects: list[Obj]) -> dict[str, str]:
    """The Redis shards' objects (Kind/name -> YAML), without the overlay's instance label and
    the NetworkPolicy's list of admitted components (what an overlay may differ in)."""
    found = {}
    for obj in objects:
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") != "redis":
            continue
        obj = copy.deepcopy(obj)
        if obj["kind"] == "NetworkPolicy" and obj["metadata"]["name"] == "redis":
            obj["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0][
                "values"
            ] = []
        elif obj["kind"] == "NetworkPolicy":  # redis-clients
            obj["spec"]["podSelector"]["matchExpressions"][0]["values"] = []
        text = GENERATED.sub(r"\1-<hash>", yaml.safe_dump(obj))  # each overlay's own env
        found[f"{obj['kind']}/{obj['metadata']['name']}"] = INSTANCE.sub("", text)
    return found


def test_local_redis_shape(rendered: dict[str, list[Obj]]) -> None:
    """N IPC pods behind the one Service, on the redis-sharded overlay's shards (the component:
    the same objects, apart from the instance label and whom the NetworkPolicy admits)."""
    objects = rendered["local-redis"]
    workloads = _workloads(objects)
    assert set(workloads) == {"Deployment/ipc", "StatefulSet/redis"}
    pod = workloads["Deployment/ipc"]
    assert _roles(pod) == ["protocol", "worker"]
    assert pod["spec"]["replicas"] >= 2
    assert pod["spec"]["strategy"]["type"] == "RollingUpdate"  # pods side by side are fine here
    service = find(objects, "Service", "channel-layer-kit")
    assert service is not None
    serving = [
        w
        for w in workloads.values()
        if selector_matches(
            {"matchLabels": service["spec"]["selector"]},
            w["spec"]["template"]["metadata"]["labels"],
        )
    ]
    assert serving == [pod]
    policy = find(objects, "NetworkPolicy", "redis")
    assert policy is not None
    admitted = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]
    assert admitted["values"] == ["ipc"]
    assert _shards(objects) == _shards(rendered["redis-sharded"])
    # Service, StatefulSet, PodDisruptionBudget, the NetworkPolicies redis and redis-clients
    assert len(_shards(objects)) == 5


def test_inmemory_shape(rendered: dict[str, list[Obj]]) -> None:
    (pod,) = _workloads(rendered["inmemory"]).values()
    assert _roles(pod) == ["combined"] and pod["spec"]["replicas"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_layer_configmap_is_built_from_config_dir(
    name: str, rendered: dict[str, list[Obj]]
) -> None:
    """No second copy: the ConfigMap's files are config/'s files, byte for byte."""
    (cm,) = [
        c
        for c in by_kind(rendered[name], "ConfigMap")
        if c["metadata"]["name"].startswith("layer-config-")
    ]
    listed = yaml.safe_load((ROOT / "config" / "Kustomization").read_text())["configMapGenerator"][
        0
    ]["files"]
    assert cm["data"] == {f: (ROOT / "config" / f).read_text() for f in listed}


def test_images_are_tagged_in_one_place(rendered: dict[str, list[Obj]]) -> None:
    """Only k8s/base names tags; every manifest refers to the bare image name."""
    for path in (ROOT / "k8s").rglob("*.yaml"):
        for image in re.findall(r"^\s*image:\s*(\S+)", path.read_text(), re.MULTILINE):
            assert ":" not in image and "@" not in image, f"{path}: tagged image {image}"
    base = yaml.safe_load((ROOT / "k8s/base/kustomization.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {i["name"]: i["newTag"] for i in base["images"]} == {
        "channel-layer-kit": version,
        "channel-layer-kit-redis": version,
    }
    images = {
        c["image"]
        for objects in rendered.values()
        for w in _workloads(objects).values()
        for c in w["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"channel-layer-kit:{version}", f"channel-layer-kit-redis:{version}"}


def test_an_images_entry_on_top_retargets_every_container(tmp_path: Path) -> None:
    """What `kustomize edit set image` writes in a user's overlay reaches all kit containers."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(OVERLAYS / "redis-sharded", tmp_path)],
                "images": [
                    {
                        "name": "channel-layer-kit",
                        "newName": "registry.example/kit/channel-layer-kit",
                        "newTag": "9.9.9",
                    }
                ],
            }
        )
    )
    objects = render(tmp_path)
    images = [
        c["image"]
        for w in _workloads(objects).values()
        for c in w["spec"]["template"]["spec"]["containers"]
    ]
    assert sorted(images) == [
        "channel-layer-kit-redis:0.1.0",
        "registry.example/kit/channel-layer-kit:9.9.9",
        "registry.example/kit/channel-layer-kit:9.9.9",
    ]
    assert all(image_repo(i).startswith("channel-layer-kit") for i in images)
    assert validate(tmp_path) == []


@pytest.mark.parametrize("name", NAMES)
def test_the_namespace_component_puts_every_object_in_a_restricted_namespace(
    name: str, tmp_path: Path
) -> None:
    """k8s/components/namespace on top of each topology: still valid, every namespaced object
    in the kit's namespace, which enforces Pod Security "restricted"."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(OVERLAYS / name, tmp_path)],
                "components": [os.path.relpath(COMPONENTS / "namespace", tmp_path)],
            }
        )
    )
    assert validate(tmp_path) == []
    objects = render(tmp_path)
    (namespace,) = by_kind(objects, "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    others = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in others} == {namespace["metadata"]["name"]}


def test_a_scrape_policy_of_your_own_passes(tmp_path: Path) -> None:
    """docs/k8s.md's advice: admit your Prometheus' namespace to the admin ports. Named peers
    may reach a non-app port; the rules refuse only what opens one to every source."""
    labels = {
        "app.kubernetes.io/name": "channel-layer-kit",
        "app.kubernetes.io/instance": "redis-sharded",
        "app.kubernetes.io/part-of": "channel-layer-kit",
        "app.kubernetes.io/managed-by": "kustomize",
    }
    scrape = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "scrape", "labels": labels},
        "spec": {
            "podSelector": {  # the kit's processes; Redis has no admin port
                "matchLabels": {"app.kubernetes.io/name": "channel-layer-kit"},
                "matchExpressions": [
                    {
                        "key": "app.kubernetes.io/component",
                        "operator": "In",
                        "values": ["protocol", "worker"],
                    }
                ],
            },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 8081}],
                }
            ],
        },
    }
    (tmp_path / "scrape.yaml").write_text(yaml.safe_dump(scrape))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": [os.path.relpath(OVERLAYS / "redis-sharded", tmp_path), "scrape.yaml"]}
        )
    )
    assert validate(tmp_path) == []
