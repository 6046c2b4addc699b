"""Deliberately broken manifests (tests/k8s/fixtures/*, each a patch on a real overlay) must fail.

Each case names the stage that must catch it and a phrase of the expected problem, so a fixture
cannot "fail" for an unrelated reason and hide a check that stopped working.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s.validate import validate

FIXTURES = Path(__file__).parent / "fixtures"
CASES = {
    "typo-field": ("schema", "'imagePullpolicy' was unexpected"),
    "missing-probe": ("policy", "container worker: no livenessProbe"),
    "readiness-timeout-default": ("policy", "readinessProbe timeoutSeconds 1 must exceed the 2 s"),
    "selector-matches-nothing": ("policy", "Service/channel-layer-kit: selector"),
    "shm-smaller-than-segment": (
        "policy",
        "/dev/shm sizeLimit 64Mi is smaller than the IPC segment",
    ),
    "redis-host-ip": ("policy", "10.244.1.17 is an IP address"),
    "redis-shards-mismatch": ("policy", "are not the Redis StatefulSet's pod DNS names"),
    "networkpolicy-open": ("policy", "admits more than the kit's pods"),
    "networkpolicy-all-ports": ("policy", "opens ports all; Redis needs exactly 6379"),
    "grace-shorter-than-drain": ("policy", "terminationGracePeriodSeconds 15 must exceed"),
    "inmemory-two-replicas": ("policy", "needs exactly one replica"),
    "service-port-missing": ("policy", "targets 'admin-worker', which no container"),
    "privilege-escalation": ("policy", "allowPrivilegeEscalation must be false"),
    "admin-port-clash": ("policy", "port 8081 is declared by 2 containers"),
    "hostpath-volume": ("policy", "volume shm is ['hostPath'], not a type the Pod Security"),
    "local-redis-policy-unpatched": (
        "policy",
        "Deployment/ipc container worker: uses Redis but no NetworkPolicy admits its pod",
    ),
    "local-redis-shm-smaller-than-segment": (
        "policy",
        "container worker: /dev/shm sizeLimit 64Mi is smaller than the IPC segment",
    ),
    "hpa-target-sets-replicas": (
        "policy",
        "sets spec.replicas although HorizontalPodAutoscaler/worker",
    ),
    # Redis: authenticated, least privilege (docs/redis.md)
    "redis-protected-mode-off": ("policy", "--protected-mode must be yes, got no"),
    "redis-ping-probe": ("policy", "readinessProbe must check for PONG"),
    "redis-password-in-configmap": ("policy", "key REDIS_PASSWORD holds a secret; use a Secret"),
    "redis-client-without-password": (
        "policy",
        "Deployment/worker container worker: layer hosts[0] does not log in as the Redis ACL",
    ),
    "redis-prefix-outside-acl": ("policy", "layer prefix 'chat' is not covered by the Redis ACL"),
    # Network and admin surface (docs/k8s.md)
    "networkpolicy-no-default-deny": (
        "policy",
        "Deployment/worker: no NetworkPolicy isolates it for ingress",
    ),
    "networkpolicy-no-dns": ("policy", "Deployment/ipc: no egress to DNS"),
    "networkpolicy-egress-anywhere": ("policy", "an egress rule without ports lets"),
    "networkpolicy-admin-open": (
        "policy",
        "lets Deployment/combined accept TCP 8081 from every source",
    ),
    "networkpolicy-http-closed": ("policy", "Deployment/protocol: accepts no ingress on its app"),
    "networkpolicy-clients-cut-off": (
        "policy",
        "Deployment/worker: no egress to StatefulSet/redis on 6379",
    ),
    "admin-host-loopback": ("policy", "KIT_ADMIN_HOST 127.0.0.1 is loopback"),
    "no-prestop": ("policy", "container protocol: no preStop sleep of at least 3 s"),
    "spread-without-match-label-keys": ("policy", "need matchLabelKeys [pod-template-hash]"),
    "ipc-requests-below-segment": ("policy", "Deployment/ipc: memory requests 256Mi are below"),
    "namespace-not-restricted": ("policy", "pod-security.kubernetes.io/enforce: restricted"),
    "redis-password-literal-env": ("policy", "env REDIS_PASSWORD is a literal in the manifest"),
    "networkpolicy-egress-port-anywhere": (
        "policy",
        "allows Deployment/ipc egress to every destination on TCP 443; only DNS",
    ),
    "redis-egress": ("policy", "allows StatefulSet/redis egress; Redis needs none"),
    "prestop-longer-than-grace": (
        "policy",
        "terminationGracePeriodSeconds 30 must exceed preStop 15 s + KIT_DRAIN_TIMEOUT 20",
    ),
}


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_fixture_fails_validation(name: str) -> None:
    stage, phrase = CASES[name]
    problems = validate(FIXTURES / name)
    assert problems, f"{name} passed validation"
    assert any(p.startswith(f"{stage}: ") and phrase in p for p in problems), problems
