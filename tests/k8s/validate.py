"""``validate(dir)``: render a kustomization, then schema-check and policy-check every object.

Also a command for your own overlays: ``python -m tests.k8s.validate k8s/overlays/ipc ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.k8s.policy import check_pods
from tests.k8s.render import RenderError, render
from tests.k8s.schema import schema_problems
from tests.k8s.topology import check_topology


def validate(directory: Path) -> list[str]:
    """Every problem found, each prefixed by the stage that found it (render/schema/policy)."""
    try:
        objects = render(directory)
    except RenderError as exc:
        return [f"render: {exc}"]
    problems = [f"schema: {p}" for p in schema_problems(objects)]
    problems += [f"policy: {p}" for p in check_pods(objects) + check_topology(objects)]
    return problems


def main(argv: list[str]) -> int:
    """Validate each directory given; exit 1 if any has a problem."""
    failed = False
    overlays = ["redis-sharded", "local-redis", "ipc", "inmemory"]
    for arg in argv or [f"k8s/overlays/{name}" for name in overlays]:
        problems = validate(Path(arg))
        failed |= bool(problems)
        print(f"{arg}: {'FAIL' if problems else 'ok'}")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
