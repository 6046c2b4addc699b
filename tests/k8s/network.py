"""NetworkPolicy rules: every pod of the kit is isolated both ways (default deny), and what is
allowed is what its role needs: the app port in, DNS and the Redis shards out, nothing for Redis.

Read from the rendered policies the way a network plugin applies them: a pod is isolated for a
direction once any policy selecting it lists that direction in ``policyTypes``; what it may do
is then the union of those policies' rules.
"""

from __future__ import annotations

from typing import Any

from tests.k8s.model import Obj, Pod, ref, selector_matches

DNS = {("UDP", 53), ("TCP", 53)}
Rule = dict[str, Any]


def check_network(
    objects: list[Obj], all_pods: list[Pod], redis_pods: list[tuple[Pod, int]], clients: list[Pod]
) -> list[str]:
    """All rules for every pod (see the module docstring). ``clients`` use Redis."""
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    problems: list[str] = []
    redis = {pod.where: port for pod, port in redis_pods}
    for pod in all_pods:
        selecting = [
            p for p in policies if selector_matches(p["spec"].get("podSelector"), pod.labels)
        ]
        ingress, egress = _rules(selecting, "Ingress"), _rules(selecting, "Egress")
        for direction, rules in (("ingress", ingress), ("egress", egress)):
            if rules is None:
                problems.append(
                    f"{pod.where}: no NetworkPolicy isolates it for {direction} (default deny)"
                )
        problems += _egress(pod, egress or [], pod.where in redis, pod in clients, redis_pods)
        if pod.where not in redis:  # Redis' ingress: tests/k8s/topology.py's _network_policy
            problems += _ingress(pod, ingress or [])
    return problems


def _rules(policies: list[Obj], direction: str) -> list[tuple[Obj, Rule]] | None:
    """The rules of one direction, or None when no policy isolates the pod for it."""
    isolating = [p for p in policies if direction in (p["spec"].get("policyTypes") or ["Ingress"])]
    if not isolating:
        return None
    key = direction.lower()
    return [(p, rule) for p in isolating for rule in p["spec"].get(key) or []]


def _ports(rule: Rule) -> set[tuple[str, object]]:
    return {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports") or []}


def _egress(
    pod: Pod,
    rules: list[tuple[Obj, Rule]],
    is_redis: bool,
    is_client: bool,
    redis_pods: list[tuple[Pod, int]],
) -> list[str]:
    problems = []
    for policy, rule in rules:
        if is_redis:
            problems.append(f"{ref(policy)}: allows {pod.where} egress; Redis needs none")
        elif not rule.get("ports"):
            problems.append(
                f"{ref(policy)}: an egress rule without ports lets {pod.where} reach every "
                "port of its destinations"
            )
        elif not rule.get("to") and not _ports(rule) <= DNS:
            problems.append(
                f"{ref(policy)}: allows {pod.where} egress to every destination on "
                f"{', '.join(sorted(f'{proto} {port}' for proto, port in _ports(rule)))}; only DNS "
                "may go anywhere"
            )
    if is_redis:
        return problems
    allowed = set().union(*(_ports(r) for _, r in rules if not r.get("to"))) if rules else set()
    if not allowed >= DNS:
        problems.append(f"{pod.where}: no egress to DNS (UDP and TCP 53): names do not resolve")
    if is_client:
        for redis, port in redis_pods:
            if not any(
                ("TCP", port) in _ports(rule)
                and any(
                    set(peer) == {"podSelector"}
                    and selector_matches(peer["podSelector"], redis.labels)
                    for peer in rule.get("to") or []
                )
                for _, rule in rules
            ):
                problems.append(
                    f"{pod.where}: no egress to {redis.where} on {port}: cannot reach Redis"
                )
    return problems


def _ingress(pod: Pod, rules: list[tuple[Obj, Rule]]) -> list[str]:
    """The app port of pods that serve it, from anywhere; any other port only from named peers
    (say, your Prometheus' namespace to the admin port), never from every source."""
    http = [
        int(p["containerPort"])
        for c in pod.spec.get("containers") or []
        for p in c.get("ports") or []
        if p.get("name") == "http"
    ]
    problems = []
    opened: set[int] = set()
    for policy, rule in rules:
        for protocol, port in _ports(rule) or {("TCP", None)}:
            number = _port_number(pod, port)
            if protocol != "TCP" or number not in http:
                if not rule.get("from") or any(not any(peer.values()) for peer in rule["from"]):
                    problems.append(
                        f"{ref(policy)}: lets {pod.where} accept {protocol} "
                        f"{port or 'every port'} from every source; only the app port (http) "
                        "of a serving pod is open to all"
                    )
            elif number is not None:
                opened.add(number)
    serving = pod.labels.get("channel-layer-kit/http") == "serve"
    if serving and not set(http) <= opened:
        problems.append(f"{pod.where}: accepts no ingress on its app port (http): unreachable")
    return problems


def _port_number(pod: Pod, port: object) -> int | None:
    if isinstance(port, int):
        return port
    for c in pod.spec.get("containers") or []:
        for declared in c.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
    return None
