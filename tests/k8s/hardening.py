"""Rules for what is protected and how: Redis logs in its clients with an ACL user whose
password comes from a Secret, no secret sits in a ConfigMap, pods leave their Service before
they stop, spread over nodes by revision, request what they use, and an optional Namespace
enforces Pod Security "restricted".
"""

from __future__ import annotations

import fnmatch
from typing import Any

from layer.config import LayerSpec
from services.redact import is_secret, mask_url
from tests.k8s.model import REDIS_IMAGE, Container, Obj, Pod, by_kind, containers, quantity, ref
from tests.k8s.model import secret_ref as secret_of

PRESTOP_MIN = 3  # seconds: endpoint removal reaches kube-proxy and ingress controllers
HEAP_FLOOR_MI = 64  # a kit process's heap at rest, rounded up (measured 37-40 MiB; docs/k8s.md)


def check_hardening(
    objects: list[Obj], all_pods: list[Pod], clients: list[tuple[Container, LayerSpec]]
) -> list[str]:
    servers = [
        c
        for pod in all_pods
        for c, _ in containers(objects, pod)
        if c.repo == REDIS_IMAGE and not c.init
    ]
    problems = [p for c in servers for p in _redis_server(c)]
    problems += [p for c, spec in clients for p in _redis_client(c, spec, servers)]
    problems += _configmaps(objects) + _namespaces(objects)
    for pod in all_pods:
        kit = [c for c, _ in containers(objects, pod) if c.is_kit and not c.init]
        problems += _prestop(pod, kit) + _spread(pod) + _memory(pod, kit)
        problems += [
            f"{c.where}: KIT_ADMIN_HOST {c.setting('KIT_ADMIN_HOST')} is loopback: the kubelet's "
            "probes and Prometheus reach the pod IP (set 0.0.0.0)"
            for c in kit
            if str(c.setting("KIT_ADMIN_HOST")).startswith("127.")
            or c.setting("KIT_ADMIN_HOST") in ("localhost", "::1")
        ]
    return problems


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def _redis_server(c: Container) -> list[str]:
    args = [str(a) for a in c.spec.get("args") or []]
    problems = []
    if _arg(args, "--protected-mode") != "yes":
        problems.append(
            f"{c.where}: --protected-mode must be yes, got {_arg(args, '--protected-mode')}"
        )
    if secret_of(c.spec, "REDIS_PASSWORD") is None:
        problems.append(f"{c.where}: REDIS_PASSWORD must come from a Secret (secretKeyRef)")
    command = [
        str(a)
        for a in ((c.spec.get("readinessProbe") or {}).get("exec") or {}).get("command") or []
    ]
    if not command or (command[0] != "redis-ready" and "PONG" not in " ".join(command)):
        problems.append(
            f"{c.where}: readinessProbe must check for PONG (redis-ready): {command} exits 0 "
            "on NOAUTH"
        )
    return problems


def _redis_client(c: Container, spec: LayerSpec, servers: list[Container]) -> list[str]:
    """Each shard entry logs in as the servers' ACL user, with their password, from the same
    Secret, under a prefix their key patterns cover."""
    problems = []
    for server in servers:
        user, password = server.env.get("REDIS_USERNAME", "layer"), server.env.get("REDIS_PASSWORD")
        for index, host in enumerate(spec.config.get("hosts") or []):
            entry: dict[str, Any] = host if isinstance(host, dict) else {}
            if entry.get("username") != user or not password or entry.get("password") != password:
                problems.append(
                    f"{c.where}: layer hosts[{index}] does not log in as the Redis ACL user "
                    f"{user!r} with the password of {ref(server.pod.owner)}"
                )
        if secret_of(c.spec, "REDIS_PASSWORD") != secret_of(server.spec, "REDIS_PASSWORD"):
            problems.append(f"{c.where}: REDIS_PASSWORD must come from the Secret Redis reads")
        prefix = str(spec.config.get("prefix", "asgi"))
        patterns = server.env.get("REDIS_KEY_PATTERNS", "asgi:*").split()
        keys = [f"{prefix}:{kind}:x" for kind in ("c", "g", "gc", "gp", "w")]
        if not all(any(fnmatch.fnmatchcase(k, p) for p in patterns) for k in keys):
            problems.append(
                f"{c.where}: layer prefix {prefix!r} is not covered by the Redis ACL key "
                f"patterns {patterns} of {ref(server.pod.owner)} (REDIS_KEY_PATTERNS)"
            )
    return problems


def _configmaps(objects: list[Obj]) -> list[str]:
    """Secrets belong in Secrets: not as ConfigMap keys, URLs with passwords, or literals."""
    problems = []
    for cm in by_kind(objects, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if is_secret(key) or mask_url(str(value)) != str(value):
                problems.append(f"{ref(cm)}: key {key} holds a secret; use a Secret")
    for obj in objects:
        template = (obj.get("spec") or {}).get("template") or {}
        for spec in (template.get("spec") or {}).get("containers") or []:
            for var in spec.get("env") or []:
                if is_secret(var["name"]) and var.get("value"):
                    problems.append(
                        f"{ref(obj)} container {spec['name']}: env {var['name']} is a literal "
                        "in the manifest; take it from a Secret"
                    )
    return problems


def _namespaces(objects: list[Obj]) -> list[str]:
    return [
        f"{ref(ns)}: needs label pod-security.kubernetes.io/enforce: restricted"
        for ns in by_kind(objects, "Namespace")
        if (ns["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce")
        != "restricted"
    ]


def _prestop(pod: Pod, kit: list[Container]) -> list[str]:
    """Serving pods sleep in preStop so endpoints drain before the listener closes; the grace
    period covers the sleep and the drain."""
    if pod.labels.get("channel-layer-kit/http") != "serve":
        return []
    problems = []
    grace = pod.spec.get("terminationGracePeriodSeconds", 30)
    for c in kit:
        pre = (c.spec.get("lifecycle") or {}).get("preStop") or {}
        seconds = (pre.get("sleep") or {}).get("seconds", 0)
        if seconds < PRESTOP_MIN:
            problems.append(
                f"{c.where}: no preStop sleep of at least {PRESTOP_MIN} s: the listener would "
                "close while the Service still routes to it"
            )
        drain = float(c.setting("KIT_DRAIN_TIMEOUT") or 0)
        if grace <= seconds + drain:
            problems.append(
                f"{c.where}: terminationGracePeriodSeconds {grace} must exceed preStop "
                f"{seconds} s + KIT_DRAIN_TIMEOUT {drain:g}"
            )
    return problems


def _spread(pod: Pod) -> list[str]:
    if pod.owner.get("kind") != "Deployment":
        return []
    return [
        f"{pod.where}: topologySpreadConstraints need matchLabelKeys [pod-template-hash] (else a "
        "rollout counts the old revision's pods)"
        for constraint in pod.spec.get("topologySpreadConstraints") or []
        if "pod-template-hash" not in (constraint.get("matchLabelKeys") or [])
    ]


def _memory(pod: Pod, kit: list[Container]) -> list[str]:
    """A memory /dev/shm counts as memory: the pod requests it, plus a heap per process."""
    shm = next((c.mount("/dev/shm") for c in kit if c.mount("/dev/shm")), None)
    if not shm or (shm.get("emptyDir") or {}).get("medium") != "Memory":
        return []
    size = (shm.get("emptyDir") or {}).get("sizeLimit")
    requested = sum(
        quantity(((c.spec.get("resources") or {}).get("requests") or {}).get("memory", 0))
        for c in kit
    )
    needed = quantity(size or 0) + len(kit) * HEAP_FLOOR_MI * (1 << 20)
    if requested < needed:
        return [
            f"{pod.where}: memory requests {requested / (1 << 20):g}Mi are below the working "
            f"set: /dev/shm {size} + {HEAP_FLOOR_MI}Mi heap per container = "
            f"{needed / (1 << 20):g}Mi"
        ]
    return []
