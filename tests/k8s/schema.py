"""Strict OpenAPI validation of rendered objects, offline (schemas ship in kubernetes-validate).

Strict means the schemas forbid unknown properties: a typo'd field fails here, where the API
server's default would be to drop it with a warning.
"""

from __future__ import annotations

import kubernetes_validate

from tests.k8s.model import Obj, ref

# The oldest Kubernetes minor the manifests claim to support, and the newest schema shipped.
VERSIONS = ("1.30", kubernetes_validate.latest_version())


def schema_problems(objects: list[Obj]) -> list[str]:
    """One problem per object and version that does not validate (first error of each)."""
    problems = []
    for obj in objects:
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path) or "<root>"
                problems.append(f"{ref(obj)} (k8s {version}): {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{ref(obj)}: {exc.message}")
    return problems
