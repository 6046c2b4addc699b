"""A read-only view of rendered Kubernetes objects: pod templates, containers, env, selectors.

The policy checks ask questions the API server would only answer at apply time (does this
selector match that template, what does this container's environment resolve to), so this
module answers them from the rendered manifests alone.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
KIT_IMAGE = "channel-layer-kit"
# Images built FROM the kit's, which run `layerkit` the same way: checked as the kit's own.
APP_IMAGES = ("django-chat",)  # examples/django-chat (k8s/components/django-chat)
REDIS_IMAGE = "channel-layer-kit-redis"
KIT_ROLES = ("protocol", "worker", "combined")
# Defaults of the `layerkit` CLI (CONTRACT.md), used when a container does not set the env var.
CLI_DEFAULTS = {
    "KIT_PORT": "8000",
    "KIT_ADMIN_PORT": "8081",
    "KIT_ADMIN_HOST": "127.0.0.1",
    "KIT_DRAIN_TIMEOUT": "20",
}

_QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_SUFFIX = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}


def quantity(value: object) -> float:
    """A Kubernetes resource quantity (``250m``, ``256Mi``, ``1``) as a number."""
    match = _QUANTITY_RE.match(str(value))
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def ref(obj: Obj) -> str:
    """``Kind/name``, how problems name an object."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def image_repo(image: str) -> str:
    """The image's last path component without tag or digest: what the kit's checks key on."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector (``matchLabels`` + ``matchExpressions``) selects ``labels``."""
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


@dataclass(frozen=True)
class Container:
    """One container of a pod template, with its environment resolved from ConfigMaps."""

    pod: Pod
    spec: Obj
    env: dict[str, str]
    init: bool = False

    @property
    def name(self) -> str:
        return str(self.spec.get("name"))

    @property
    def where(self) -> str:
        return f"{self.pod.where} container {self.name}"

    @property
    def repo(self) -> str:
        return image_repo(str(self.spec.get("image", "")))

    @property
    def is_kit(self) -> bool:
        return self.repo == KIT_IMAGE or self.repo in APP_IMAGES

    @property
    def role(self) -> str:
        """``protocol``/``worker``/``combined`` for kit containers (the image's CMD is combined)."""
        args = self.spec.get("args") or ["combined"]
        return str(args[0])

    def setting(self, name: str) -> str | None:
        """An env var as the CLI will see it, falling back to the CLI's documented default."""
        return self.env.get(name, CLI_DEFAULTS.get(name))

    def port_setting(self, name: str) -> int | None:
        """A port env var (``KIT_ADMIN_PORT``...) as a number; None when it is not one."""
        value = self.setting(name)
        return int(value) if value is not None and value.isdigit() else None

    def port_number(self, port: object) -> int | None:
        """Resolve a probe/Service port (number or container port name) to a number."""
        if isinstance(port, int):
            return port
        for declared in self.spec.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        return None

    def declares(self, port: object) -> bool:
        """Whether ``port`` (name or number) is one of this container's declared ports."""
        number = self.port_number(port)
        return number is not None and any(
            int(p["containerPort"]) == number for p in self.spec.get("ports") or []
        )

    def mount(self, path: str) -> Obj | None:
        """The volume mounted at exactly ``path``, if any."""
        for mount in self.spec.get("volumeMounts") or []:
            if mount.get("mountPath") == path:
                return self.pod.volume(str(mount.get("name")))
        return None


@dataclass(frozen=True)
class Pod:
    """A workload's pod template (what every replica of it will look like)."""

    owner: Obj
    template: Obj

    @property
    def where(self) -> str:
        return ref(self.owner)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.template.get("metadata", {}).get("labels") or {})

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.template.get("metadata", {}).get("annotations") or {})

    @property
    def spec(self) -> Obj:
        return dict(self.template.get("spec") or {})

    @property
    def replicas(self) -> int:
        return int(self.owner.get("spec", {}).get("replicas", 1))

    def volume(self, name: str) -> Obj | None:
        return next((v for v in self.spec.get("volumes") or [] if v.get("name") == name), None)


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


def find(objects: list[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in by_kind(objects, kind) if o["metadata"].get("name") == name), None)


def pods(objects: list[Obj]) -> list[Pod]:
    """Every pod template in the rendered set."""
    return [
        Pod(o, o["spec"]["template"])
        for o in objects
        if o.get("kind") in WORKLOAD_KINDS and isinstance(o.get("spec", {}).get("template"), dict)
    ]


def containers(objects: list[Obj], pod: Pod) -> Iterator[tuple[Container, list[str]]]:
    """Each container of ``pod`` with its resolved env, and problems met resolving it."""
    specs = [(spec, True) for spec in pod.spec.get("initContainers") or []]
    specs += [(spec, False) for spec in pod.spec.get("containers") or []]
    for spec, init in specs:
        env, problems = _environment(objects, spec)
        where = f"{pod.where} container {spec.get('name')}"
        yield Container(pod, spec, env, init), [f"{where}: {p}" for p in problems]


def _environment(objects: list[Obj], spec: Obj) -> tuple[dict[str, str], list[str]]:
    """``envFrom`` then ``env`` (which wins), ConfigMap references resolved."""
    env: dict[str, str] = {}
    problems: list[str] = []
    for source in spec.get("envFrom") or []:
        name = (source.get("configMapRef") or {}).get("name")
        if name is None:
            problems.append(f"envFrom {source} is not a configMapRef; cannot resolve it offline")
            continue
        cm = find(objects, "ConfigMap", name)
        if cm is None:
            problems.append(f"envFrom names ConfigMap {name!r}, which is not in the manifests")
            continue
        prefix = source.get("prefix", "")
        env.update({prefix + k: str(v) for k, v in (cm.get("data") or {}).items()})
    for var in spec.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        key_ref = (var.get("valueFrom") or {}).get("configMapKeyRef")
        cm = find(objects, "ConfigMap", key_ref["name"]) if key_ref else None
        secret_ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if key_ref and cm and key_ref["key"] in (cm.get("data") or {}):
            env[var["name"]] = str(cm["data"][key_ref["key"]])
        elif secret_ref:
            value = secret_value(objects, secret_ref["name"], secret_ref["key"])
            if value is None:
                problems.append(
                    f"env {var['name']} names a Secret key that is not in the manifests"
                )
            else:
                env[var["name"]] = value
        elif "valueFrom" not in var:
            env[var["name"]] = ""
    return env, problems


def secret_value(objects: list[Obj], name: str, key: str) -> str | None:
    """A rendered Secret's value (``stringData`` or base64 ``data``), if the manifests hold it."""
    secret = find(objects, "Secret", name)
    if secret is None:
        return None
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


def secret_ref(spec: Obj, name: str) -> tuple[str, str] | None:
    """``(Secret name, key)`` when the container's env var ``name`` comes from a Secret."""
    for var in spec.get("env") or []:
        ref_ = (var.get("valueFrom") or {}).get("secretKeyRef")
        if var.get("name") == name and ref_:
            return str(ref_["name"]), str(ref_["key"])
    return None
