"""``python -m layer.ipc clean --prefix X [--force]``: remove a prefix's segment and doorbell
FIFOs (refused while live processes use it, unless ``--force``);
``python -m layer.ipc check --prefix X``: check its segment's consistency (exit 0 when
consistent, 1 listing the problems, 2 when there is no segment)."""

from __future__ import annotations

import argparse
import sys

from layer.exceptions import InvalidOption
from layer.ipc.check import NoSegment, verify
from layer.ipc.segment import check_prefix, live_instances, unlink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layer.ipc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    clean = commands.add_parser("clean", help="remove /dev/shm objects of a prefix")
    clean.add_argument("--prefix", required=True, help="the layer's `prefix` option")
    clean.add_argument(
        "--force", action="store_true", help="remove it even while live processes use it"
    )
    check = commands.add_parser("check", help="check the consistency of a prefix's segment")
    check.add_argument("--prefix", required=True, help="the layer's `prefix` option")
    args = parser.parse_args(argv)
    try:
        prefix = check_prefix(args.prefix)
    except InvalidOption as exc:
        parser.error(str(exc))
    if args.command == "check":
        return _check(prefix)
    live = live_instances(prefix)
    if live and not args.force:
        print(
            f"error: {live} live layer instance(s) use prefix {prefix!r}; removing it now would "
            "leave them on a deleted segment while new processes make another (every request "
            "between them would fail). Stop them first, or pass --force.",
            file=sys.stderr,
        )
        return 1
    removed = unlink(prefix)
    print(f"removed {len(removed)} object(s) of prefix {prefix!r}: {' '.join(removed) or '-'}")
    return 0


def _check(prefix: str) -> int:
    try:
        report = verify(prefix)
    except NoSegment as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    repaired = f" (the check's lock entry repaired {report.repaired})" if report.repaired else ""
    if report.ok:
        print(f"consistent: {report.summary()}{repaired}")
        return 0
    total = len(report.problems) + report.unlisted
    print(f"{total} problem(s) in the segment of prefix {prefix!r}{repaired}:")
    for problem in report.problems:
        print(f"  {problem}")
    if report.unlisted:
        print(f"  ... and {report.unlisted} more")
    return 1


if __name__ == "__main__":
    sys.exit(main())
