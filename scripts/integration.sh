#!/usr/bin/env bash
# Runs the integration suite against the real docker-compose stack: brings every topology up,
# waits until each container is healthy, runs `pytest -m "integration and not example"`; then
# the same topologies with the example chat instead of the demo (examples/django-chat/compose.yml)
# and `pytest -m "integration and example"`; tears the stack down (containers, networks,
# volumes) however the run ends. Extra arguments go to both pytest runs.
# Env: KIT_COMPOSE_PROJECT (default kitit), KIT_UP_TIMEOUT (seconds, default 240).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
export KIT_COMPOSE_PROJECT=${KIT_COMPOSE_PROJECT:-kitit}
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi
compose+=(--project-name "$KIT_COMPOSE_PROJECT" --file docker-compose.yml)
export KIT_COMPOSE_CMD="${compose[*]}"

log() { printf '[integration] %s\n' "$*" >&2; }

teardown() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        mkdir -p .cache/integration
        "${compose[@]}" logs --no-color --timestamps >.cache/integration/logs.txt 2>&1 || true
        log "failed (exit $rc); container states and recent logs (all: .cache/integration/logs.txt):"
        "${compose[@]}" ps >&2 || true
        "${compose[@]}" logs --no-color --tail 40 >&2 || true
    fi
    log "tearing down"
    "${compose[@]}" down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

# A fresh stack from the current compose files; every container of the project has a
# healthcheck: wait for all of them (compose 1.29 has no `up --wait`).
bring_up() {
    "${compose[@]}" down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    local began deadline states
    began=$(date +%s)
    deadline=$((began + ${KIT_UP_TIMEOUT:-240}))
    log "starting the stack (${compose[*]})"
    "${compose[@]}" up -d --no-build
    while :; do
        states=$(docker ps -a --filter "label=com.docker.compose.project=$KIT_COMPOSE_PROJECT" \
            --format '{{.Names}} {{.Status}}')
        [ -n "$states" ] && ! grep -qv '(healthy)' <<<"$states" && break
        if [ "$(date +%s)" -ge $deadline ]; then
            log "not healthy after ${KIT_UP_TIMEOUT:-240} s:"
            echo "$states" >&2
            exit 1
        fi
        sleep 2
    done
    log "all containers healthy after $(($(date +%s) - began)) s"
}

start=$(date +%s)
bring_up
"$PY" -m pytest -m "integration and not example" tests/integration -p no:cacheprovider "$@"
log "integration suite took $(($(date +%s) - start)) s including start-up"

# The example chat in the same topologies: the override swaps the image and the app.
example=$(date +%s)
compose+=(--file examples/django-chat/compose.yml)
export KIT_COMPOSE_CMD="${compose[*]}"
bring_up
"$PY" -m pytest -m "integration and example" tests/integration -p no:cacheprovider "$@"
log "example suite took $(($(date +%s) - example)) s including start-up"
log "both took $(($(date +%s) - start)) s"
