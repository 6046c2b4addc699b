"""``python -m bench [--quick] [--only NAME ...]``: run suites, write the report."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from bench import report, suites
from bench.core import SuiteResult


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes (smoke test)")
    parser.add_argument("--only", nargs="*", default=None, help="suite names to run")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="where to write")
    args = parser.parse_args()
    names = sorted(m.name for m in pkgutil.iter_modules(suites.__path__))
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"unknown suite(s) {sorted(unknown)}; available: {', '.join(names)}")
    results: list[SuiteResult] = []
    for name in args.only or names:
        print(f"== {name}", flush=True)
        suite: SuiteResult = importlib.import_module(f"bench.suites.{name}").run(args.quick)
        for r in suite.results:
            print(f"   {r.workload:<28} {r.subject:<28} {r.value:>14,.0f} {r.unit}", flush=True)
        results.append(suite)
    path = report.write(results, args.docs, args.quick)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
