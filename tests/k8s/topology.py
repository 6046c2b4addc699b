"""Checks across objects: Services, PDBs, HPAs, the Redis NetworkPolicy and the layer configs.

These are the mistakes the API server accepts and a cluster only shows at run time: a Service
routing to nothing, shard URLs that do not name the StatefulSet's pods, a ``/dev/shm`` too
small for the IPC segment, an in-memory layer scaled past one process.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from layer.config import LayerSpec
from layer.options import byte_size
from tests.k8s.hardening import check_hardening
from tests.k8s.layerconfig import layer_spec
from tests.k8s.model import (
    REDIS_IMAGE,
    Container,
    Obj,
    Pod,
    by_kind,
    containers,
    find,
    image_repo,
    pods,
    quantity,
    ref,
    selector_matches,
)
from tests.k8s.network import check_network

IPC_SIZE_OPTION = "size"  # the IPC layer's segment size option (config/ipc.yaml)


def check_topology(objects: list[Obj]) -> list[str]:
    """All cross-object rules; see the module docstring. A composed layer's halves (the Local
    + Redis layer's) each meet their own backend's rules."""
    all_pods = pods(objects)
    problems = _services(objects, all_pods) + _pdbs(objects, all_pods) + _hpas(objects)
    layers: list[tuple[Container, LayerSpec]] = []
    halves: list[tuple[Container, LayerSpec]] = []
    for pod in all_pods:
        for c, _ in containers(objects, pod):
            if not c.is_kit or c.init:
                continue
            try:
                spec = layer_spec(objects, c)
                halves += [(c, half) for half in _halves(spec)]
            except (LookupError, ValueError) as exc:  # ConfigError is a ValueError
                problems.append(f"{c.where}: layer config: {exc}")
                continue
            layers.append((c, spec))
    redis_clients = [(c, s) for c, s in halves if _backend(s) == "redis"]
    problems += _redis(objects, all_pods, redis_clients)
    problems += _ipc([(c, s) for c, s in halves if _backend(s) == "ipc"])
    problems += _single_process(objects, layers)
    problems += check_hardening(objects, all_pods, redis_clients)
    redis_pods = [(_pod_of(sts), port) for sts, port, _ in _redis_statefulsets(objects)]
    client_pods = [c.pod for c, _ in redis_clients]
    return problems + check_network(objects, all_pods, redis_pods, client_pods)


def _halves(spec: LayerSpec) -> list[LayerSpec]:
    """The layers a container builds: the spec's own, or those a composed layer is made of
    (``parts``: layer.local's IPC and Redis halves, each under its own key of CONFIG), so each
    half meets its backend's rules."""
    parts: dict[str, type] = getattr(spec.backend_class(), "parts", {})
    return [
        LayerSpec(spec.alias, f"{cls.__module__}.{cls.__name__}", spec.config.get(key) or {})
        for key, cls in parts.items()
    ] or [spec]


def _backend(spec: LayerSpec) -> str:
    """``redis``/``ipc``/``inmemory`` from the dotted BACKEND path."""
    return spec.backend.split(".")[1] if spec.backend.count(".") >= 2 else spec.backend


def _matching(selector: dict[str, Any] | None, all_pods: list[Pod]) -> list[Pod]:
    return [p for p in all_pods if selector_matches(selector, p.labels)]


def _services(objects: list[Obj], all_pods: list[Pod]) -> list[str]:
    problems = []
    for svc in by_kind(objects, "Service"):
        selector = svc["spec"].get("selector")
        if not selector:
            problems.append(f"{ref(svc)}: no selector (endpoints would have to be hand-made)")
            continue
        targets = _matching({"matchLabels": selector}, all_pods)
        if not targets:
            problems.append(f"{ref(svc)}: selector {selector} selects no pod template")
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for pod in targets:
                if not any(c.declares(target) for c, _ in containers(objects, pod)):
                    problems.append(
                        f"{ref(svc)}: port {port.get('name', port.get('port'))} targets "
                        f"{target!r}, which no container of {pod.where} declares"
                    )
    return problems


def _pdbs(objects: list[Obj], all_pods: list[Pod]) -> list[str]:
    return [
        f"{ref(pdb)}: selector selects no pod template"
        for pdb in by_kind(objects, "PodDisruptionBudget")
        if not _matching(pdb["spec"].get("selector"), all_pods)
    ]


def _hpas(objects: list[Obj]) -> list[str]:
    problems = []
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        target_ref = hpa["spec"]["scaleTargetRef"]
        target = find(objects, target_ref["kind"], target_ref["name"])
        if target is None:
            problems.append(f"{ref(hpa)}: scaleTargetRef {target_ref} is not in the manifests")
            continue
        if "replicas" in target["spec"]:
            problems.append(
                f"{ref(target)}: sets spec.replicas although {ref(hpa)} scales it; every "
                "`kubectl apply` would reset the autoscaled count"
            )
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            problems.append(f"{ref(hpa)}: minReplicas > maxReplicas")
        for metric in hpa["spec"].get("metrics") or []:
            resource = (metric.get("resource") or {}).get("name")
            if metric.get("type") != "Resource" or resource is None:
                continue
            for c in target["spec"]["template"]["spec"]["containers"]:
                if resource not in ((c.get("resources") or {}).get("requests") or {}):
                    problems.append(
                        f"{ref(hpa)}: scales on {resource} but {ref(target)} container "
                        f"{c['name']} has no {resource} request"
                    )
    return problems


def _redis_statefulsets(objects: list[Obj]) -> Iterator[tuple[Obj, int, list[str]]]:
    """StatefulSets running the kit's Redis image: the Redis port, and problems with it."""
    for sts in by_kind(objects, "StatefulSet"):
        for c in sts["spec"]["template"]["spec"]["containers"]:
            if image_repo(str(c.get("image", ""))) != REDIS_IMAGE:
                continue
            declared = [int(p["containerPort"]) for p in c.get("ports") or []]
            args = [str(a) for a in c.get("args") or []]
            listens = int(args[args.index("--port") + 1]) if "--port" in args[:-1] else 6379
            bad = (
                []
                if listens in declared
                else [
                    f"{ref(sts)}: redis-server listens on {listens}, not a declared containerPort"
                ]
            )
            yield sts, listens, bad


def _redis(
    objects: list[Obj], all_pods: list[Pod], clients: list[tuple[Container, LayerSpec]]
) -> list[str]:
    problems: list[str] = []
    expected: dict[tuple[str, int], str] = {}
    redis_pods = []
    for sts, port, bad in _redis_statefulsets(objects):
        problems += bad
        service_name = sts["spec"].get("serviceName")
        svc = find(objects, "Service", str(service_name))
        if svc is None or svc["spec"].get("clusterIP") != "None":
            problems.append(f"{ref(sts)}: serviceName {service_name!r} is not a headless Service")
        elif not selector_matches({"matchLabels": svc["spec"]["selector"]}, _pod_of(sts).labels):
            problems.append(f"{ref(svc)}: does not select the pods of {ref(sts)}")
        for i in range(int(sts["spec"].get("replicas", 1))):
            expected[(f"{sts['metadata']['name']}-{i}.{service_name}", port)] = ref(sts)
        redis_pods.append((_pod_of(sts), port))
    problems += _network_policy(objects, all_pods, redis_pods, clients)
    host_lists = {}
    for c, spec in clients:
        hosts, bad = _hosts(spec)
        problems += [f"{c.where}: layer hosts: {b}" for b in bad]
        host_lists[c.where] = hosts
        if set(hosts) != set(expected):
            problems.append(
                f"{c.where}: layer hosts {sorted(hosts)} are not the Redis StatefulSet's pod DNS "
                f"names {sorted(expected)}"
            )
    if len({tuple(h) for h in host_lists.values()}) > 1:
        problems.append(f"kit containers disagree on the Redis shard list: {host_lists}")
    return problems


def _pod_of(obj: Obj) -> Pod:
    return Pod(obj, obj["spec"]["template"])


def _hosts(spec: LayerSpec) -> tuple[list[tuple[str, int]], list[str]]:
    """(hostname, port) of each ``hosts`` entry, with the cluster-domain suffix stripped."""
    hosts, bad = [], []
    for entry in spec.config.get("hosts") or []:
        if isinstance(entry, dict):
            entry = entry.get("address") or [entry.get("host"), entry.get("port", 6379)]
        if isinstance(entry, str):
            url = urlsplit(entry)
            host, port = url.hostname or "", url.port or 6379
        else:
            host, port = str(entry[0]), int(entry[1])
        try:
            ipaddress.ip_address(host)
            bad.append(f"{host} is an IP address; use the StatefulSet's DNS names")
        except ValueError:
            pass
        hosts.append((host.split(".svc")[0].rsplit(".", 1)[0] if ".svc" in host else host, port))
    return hosts, bad


def _network_policy(
    objects: list[Obj],
    all_pods: list[Pod],
    redis_pods: list[tuple[Pod, int]],
    clients: list[tuple[Container, LayerSpec]],
) -> list[str]:
    """Redis pods are isolated for ingress and reachable only from the kit's own pods."""
    problems = []
    for redis, port in redis_pods:
        policies = [
            np
            for np in by_kind(objects, "NetworkPolicy")
            if selector_matches(np["spec"].get("podSelector"), redis.labels)
            and "Ingress" in (np["spec"].get("policyTypes") or ["Ingress"])
        ]
        if not policies:
            problems.append(f"{redis.where}: no NetworkPolicy restricts ingress to the Redis pods")
            continue
        peers = []
        for np in policies:
            for rule in np["spec"].get("ingress") or []:
                ports = {p.get("port") for p in rule.get("ports") or []}
                if ports != {port}:
                    problems.append(
                        f"{ref(np)}: an ingress rule opens ports {sorted(map(str, ports)) or 'all'}"
                        f"; Redis needs exactly {port}"
                    )
                sources = rule.get("from") or []
                if not sources:
                    problems.append(
                        f"{ref(np)}: an ingress rule without `from` admits every source"
                    )
                for peer in sources:
                    if set(peer) != {"podSelector"} or not peer["podSelector"]:
                        problems.append(
                            f"{ref(np)}: ingress peer {peer} admits more than the kit's pods"
                        )
                        continue
                    peers.append(peer["podSelector"])
                    strangers = [
                        p.where
                        for p in _matching(peer["podSelector"], all_pods)
                        if p not in [c.pod for c, _ in clients]
                    ]
                    if strangers:
                        problems.append(
                            f"{ref(np)}: admits pods that are no layer clients: {strangers}"
                        )
        for c, _ in clients:
            if not any(selector_matches(sel, c.pod.labels) for sel in peers):
                problems.append(f"{c.where}: uses Redis but no NetworkPolicy admits its pod")
    return problems


def _ipc(clients: list[tuple[Container, LayerSpec]]) -> list[str]:
    """The IPC segment lives in /dev/shm: a memory emptyDir, shared, at least segment-sized."""
    problems = []
    volumes: dict[str, set[str]] = {}
    for c, spec in clients:
        if IPC_SIZE_OPTION not in spec.config:
            problems.append(f"{c.where}: IPC layer config has no {IPC_SIZE_OPTION!r} option")
            continue
        segment = byte_size(IPC_SIZE_OPTION, spec.config[IPC_SIZE_OPTION])
        volume = c.mount("/dev/shm")
        empty_dir = (volume or {}).get("emptyDir")
        if empty_dir is None or empty_dir.get("medium") != "Memory":
            problems.append(f"{c.where}: /dev/shm must be an emptyDir with medium: Memory")
            continue
        volumes.setdefault(c.pod.where, set()).add(str(volume["name"]))  # type: ignore[index]
        limit = empty_dir.get("sizeLimit")
        if limit is None or quantity(limit) < segment:
            problems.append(
                f"{c.where}: /dev/shm sizeLimit {limit} is smaller than the IPC segment "
                f"({spec.config[IPC_SIZE_OPTION]} = {segment} bytes)"
            )
            continue
        memory = ((c.spec.get("resources") or {}).get("limits") or {}).get("memory")
        if memory is not None and quantity(memory) <= quantity(limit):
            problems.append(
                f"{c.where}: memory limit {memory} must exceed the /dev/shm sizeLimit {limit} "
                "(shared-memory pages count against the container that touches them)"
            )
    for c, _ in clients:
        roles = {o.role for o, _ in clients if o.pod is c.pod}
        if c.role == "protocol" and not roles & {"worker", "combined"}:
            problems.append(f"{c.pod.where}: IPC protocol server without a worker in its pod")
    problems += [
        f"{where}: IPC containers mount different /dev/shm volumes {sorted(v)}"
        for where, v in volumes.items()
        if len(v) > 1
    ]
    return problems


def _single_process(objects: list[Obj], layers: list[tuple[Container, LayerSpec]]) -> list[str]:
    """The in-memory layer lives in one process: combined role, one replica, no autoscaler."""
    problems = []
    scaled = {
        hpa["spec"]["scaleTargetRef"]["name"] for hpa in by_kind(objects, "HorizontalPodAutoscaler")
    }
    for c, spec in layers:
        if _backend(spec) != "inmemory":
            continue
        if c.role != "combined":
            problems.append(f"{c.where}: the in-memory layer only works with `layerkit combined`")
        if c.pod.replicas != 1 or c.pod.owner["metadata"]["name"] in scaled:
            problems.append(f"{c.pod.where}: the in-memory layer needs exactly one replica")
    return problems
