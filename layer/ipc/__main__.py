"""``python -m layer.ipc clean --prefix X``: remove a prefix's segment and doorbell FIFOs."""

from __future__ import annotations

import argparse
import sys

from layer.exceptions import InvalidOption
from layer.ipc.segment import check_prefix, unlink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layer.ipc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    clean = commands.add_parser("clean", help="remove /dev/shm objects of a prefix")
    clean.add_argument("--prefix", required=True, help="the layer's `prefix` option")
    args = parser.parse_args(argv)
    try:
        prefix = check_prefix(args.prefix)
    except InvalidOption as exc:
        parser.error(str(exc))
    removed = unlink(prefix)
    print(f"removed {len(removed)} object(s) of prefix {prefix!r}: {' '.join(removed) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
