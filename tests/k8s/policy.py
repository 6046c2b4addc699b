"""The kit's rules for every pod and container, beyond what the OpenAPI schema can express.

Each check returns human-readable problems (empty = fine) naming the object and field, so a
failing test says what to fix.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from services.admin import READY_TIMEOUT
from tests.k8s.model import (
    KIT_ROLES,
    Container,
    Obj,
    Pod,
    by_kind,
    containers,
    pods,
    quantity,
    ref,
    selector_matches,
)

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
KIT_PROBE_PATHS = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
DEFAULT_GRACE = 30  # Kubernetes' terminationGracePeriodSeconds default
DEFAULT_PROBE_TIMEOUT = 1  # Kubernetes' probe timeoutSeconds default


def check_pods(objects: list[Obj]) -> list[str]:
    """Labels, selectors, scraping and per-container rules of every pod template."""
    problems = [p for obj in objects for p in _labels(obj)]
    services = by_kind(objects, "Service")
    for pod in pods(objects):
        problems += _selector(pod)
        resolved = list(containers(objects, pod))
        problems += [p for _, ps in resolved for p in ps]
        kit = [c for c, _ in resolved if c.is_kit and not c.init]
        for container, _ in resolved:
            problems += _resources(container) + _security(container) + _image(container)
            problems += [] if container.init else _probes(container)
        for container in kit:
            problems += _kit_ports(container) + _grace(container)
        problems += _port_clashes(pod, [c for c, _ in resolved]) + _scraped(pod, kit, services)
        problems += _host_isolation(pod, [c for c, _ in resolved])
    return problems


# Volume types the Pod Security "restricted" profile allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _host_isolation(pod: Pod, cs: list[Container]) -> list[str]:
    """The rest of the Pod Security "restricted" profile: nothing shared with the node."""
    problems = [
        f"{pod.where}: {key} must not be set"
        for key in ("hostNetwork", "hostPID", "hostIPC")
        if pod.spec.get(key)
    ]
    for volume in pod.spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(
                f"{pod.where}: volume {volume['name']} is {sorted(kinds)}, not a type the Pod "
                "Security restricted profile allows"
            )
    problems += [
        f"{c.where}: hostPort {p['hostPort']} ties the pod to a node port"
        for c in cs
        for p in c.spec.get("ports") or []
        if p.get("hostPort")
    ]
    return problems


def _labels(obj: Obj) -> list[str]:
    """Standard labels everywhere; ``component`` where an object belongs to one role."""
    labels = obj.get("metadata", {}).get("labels") or {}
    if obj.get("kind") == "Namespace":  # the optional component's: holds every instance
        return []
    shared = obj.get("kind") in {"ConfigMap", "Secret", "ServiceAccount", "NetworkPolicy"}
    missing = [
        k for k in STANDARD_LABELS if k not in labels and not (shared and k.endswith("component"))
    ]
    if obj.get("kind") in {"Deployment", "StatefulSet"}:
        template = obj["spec"]["template"].get("metadata", {}).get("labels") or {}
        missing += [f"pod template {k}" for k in STANDARD_LABELS if k not in template]
    return [f"{ref(obj)}: missing label {k}" for k in missing]


def _selector(pod: Pod) -> list[str]:
    selector = pod.owner.get("spec", {}).get("selector")
    if not selector_matches(selector, pod.labels):
        return [f"{pod.where}: spec.selector {selector} does not match its pod template labels"]
    return []


def _probes(c: Container) -> list[str]:
    """Liveness and readiness on every container; the kit's on its admin port's endpoints."""
    problems = []
    for kind in ("livenessProbe", "readinessProbe"):
        probe = c.spec.get(kind)
        if not probe:
            problems.append(f"{c.where}: no {kind}")
            continue
        if not c.is_kit:
            continue
        get = probe.get("httpGet") or {}
        admin = c.port_setting("KIT_ADMIN_PORT")
        if admin is None or c.port_number(get.get("port")) != admin:
            problems.append(
                f"{c.where}: {kind} must be an httpGet on the admin port {admin} "
                f"(KIT_ADMIN_PORT), got {probe}"
            )
        elif get.get("path") != KIT_PROBE_PATHS[kind]:
            problems.append(f"{c.where}: {kind} path must be {KIT_PROBE_PATHS[kind]}")
        timeout = probe.get("timeoutSeconds", DEFAULT_PROBE_TIMEOUT)
        if kind == "readinessProbe" and timeout <= READY_TIMEOUT:
            problems.append(
                f"{c.where}: readinessProbe timeoutSeconds {timeout} must exceed the "
                f"{READY_TIMEOUT:g} s /readyz may take (services/admin.py READY_TIMEOUT), or a "
                "shard slow to answer reads as a timed-out probe instead of its reason"
            )
    return problems


def _resources(c: Container) -> list[str]:
    resources = c.spec.get("resources") or {}
    problems = []
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(bound) or {}):
                problems.append(f"{c.where}: no resources.{bound}.{resource}")
    for resource in ("cpu", "memory"):
        request = (resources.get("requests") or {}).get(resource)
        limit = (resources.get("limits") or {}).get(resource)
        if request is not None and limit is not None and quantity(request) > quantity(limit):
            problems.append(f"{c.where}: {resource} request {request} > limit {limit}")
    return problems


def _security(c: Container) -> list[str]:
    pod_ctx: dict[str, Any] = c.pod.spec.get("securityContext") or {}
    ctx: dict[str, Any] = c.spec.get("securityContext") or {}

    def effective(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    problems = []
    if effective("runAsNonRoot") is not True:
        problems.append("runAsNonRoot must be true")
    if effective("runAsUser") == 0:
        problems.append("runAsUser must not be 0")
    if ctx.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem must be true")
    if ctx.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    if ctx.get("privileged"):
        problems.append("privileged must not be set")
    caps = ctx.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problems.append("capabilities.drop must contain ALL")
    if caps.get("add"):
        problems.append(f"capabilities.add must be empty, got {caps['add']}")
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile.type must be RuntimeDefault")
    return [f"{c.where}: securityContext: {p}" for p in problems]


def _image(c: Container) -> list[str]:
    image = str(c.spec.get("image", ""))
    last = image.rsplit("/", 1)[-1]
    if "@" not in last and (":" not in last or last.endswith(":latest")):
        return [f"{c.where}: image {image!r} needs an explicit version tag (set in k8s/base)"]
    return []


def _kit_ports(c: Container) -> list[str]:
    problems = []
    wanted = ["KIT_ADMIN_PORT"]
    if c.role in ("protocol", "combined"):
        wanted.append("KIT_PORT")
        if c.env.get("KIT_HOST") != "0.0.0.0":
            problems.append(
                f"{c.where}: KIT_HOST must be 0.0.0.0 (the CLI's default 127.0.0.1 is "
                f"unreachable from the Service), got {c.env.get('KIT_HOST')!r}"
            )
    if c.role not in KIT_ROLES:
        problems.append(f"{c.where}: args[0] must be one of {KIT_ROLES}, got {c.role!r}")
    for var in wanted:
        port = c.port_setting(var)
        if port is None or not c.declares(port):
            problems.append(f"{c.where}: {var}={c.setting(var)} is not a declared containerPort")
    return problems


def _grace(c: Container) -> list[str]:
    if c.role not in ("worker", "combined"):
        return []
    drain = float(c.setting("KIT_DRAIN_TIMEOUT") or 0)
    grace = c.pod.spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE)
    if grace <= drain:
        return [
            f"{c.where}: terminationGracePeriodSeconds {grace} must exceed KIT_DRAIN_TIMEOUT "
            f"{drain:g}, or the kubelet kills the worker mid-drain"
        ]
    return []


def _port_clashes(pod: Pod, cs: list[Container]) -> list[str]:
    """Containers of one pod share its network namespace: no two may declare one port.

    Kit containers must declare every port they bind (see ``_kit_ports``), so this also
    catches two kit processes both binding, say, the default admin port.
    """
    bound = Counter(int(p["containerPort"]) for c in cs for p in c.spec.get("ports") or [])
    return [
        f"{pod.where}: port {port} is declared by {n} containers"
        for port, n in bound.items()
        if n > 1
    ]


def _scraped(pod: Pod, kit: list[Container], services: list[Obj]) -> list[str]:
    """Every kit container's admin port is scraped: pod annotations or an annotated Service."""
    scraped: dict[int, str] = {}
    sources = [pod.annotations] + [
        svc["metadata"].get("annotations") or {}
        for svc in services
        if svc["spec"].get("selector")
        and selector_matches({"matchLabels": svc["spec"]["selector"]}, pod.labels)
    ]
    for notes in sources:
        if notes.get("prometheus.io/scrape") == "true" and notes.get("prometheus.io/port"):
            port = int(notes["prometheus.io/port"])
            scraped[port] = notes.get("prometheus.io/path", "/metrics")
    problems = []
    for c in kit:
        admin = c.port_setting("KIT_ADMIN_PORT")
        if admin not in scraped:
            problems.append(
                f"{c.where}: admin port {admin} has no prometheus.io/scrape + port annotation "
                "(on the pod template or on a Service selecting the pod)"
            )
        elif scraped[admin] != "/metrics":
            problems.append(f"{c.where}: prometheus.io/path must be /metrics, got {scraped[admin]}")
    return problems
