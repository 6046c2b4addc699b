#!/usr/bin/env bash
# Refreshes tests/compose/compose-spec.json, the Compose Specification JSON schema the compose
# file is validated against in `make test`, from the npm package `dclint` (which ships the
# upstream compose-spec schema as schemas/compose.schema.json). Vendored so tests need no network.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.1.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "dclint@$version" >/dev/null && tar xzf dclint-*.tgz)
cp "$tmp/package/schemas/compose.schema.json" tests/compose/compose-spec.json
echo "tests/compose/compose-spec.json from dclint@$version"
