#!/bin/sh
# Readiness of a kit Redis: ready only when the layer's user gets PONG. `redis-cli ping` alone
# exits 0 on NOAUTH or NOPERM too (it prints the error), so the reply itself is compared.
# Usage: redis-ready [port]   (env: REDIS_USERNAME, REDIS_PASSWORD, as the entrypoint's)
set -eu
reply=$(REDISCLI_AUTH=${REDIS_PASSWORD:-} redis-cli --no-auth-warning \
    --user "${REDIS_USERNAME:-layer}" -p "${1:-6379}" ping 2>&1) || true
if [ "$reply" != PONG ]; then
    echo "not ready: ${reply:-no answer}" >&2
    exit 1
fi
