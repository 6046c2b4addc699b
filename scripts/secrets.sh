#!/usr/bin/env bash
# Creates the Redis passwords the deployments read, once, each random (32 bytes, hex), readable
# by their owner only, and never committed (.gitignore):
#   .secrets/redis.env                           docker-compose.yml's env file (REDIS_PASSWORD)
#   k8s/components/redis-shards/redis-auth.env   the k8s Secret redis-auth (secretGenerator)
# An existing file is kept: rotating a password is deleting its file and running this again
# (then recreate the stack / re-apply the overlay; docs/redis.md). Prints what it created.
set -euo pipefail
cd "$(dirname "$0")/.."

new_password() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

create() {
    local path=$1
    [ -s "$path" ] && return 0
    mkdir -p "$(dirname "$path")"
    (umask 077; printf 'REDIS_PASSWORD=%s\n' "$(new_password)" >"$path.tmp")
    mv "$path.tmp" "$path"
    echo "created $path" >&2
}

mkdir -p .secrets && chmod 700 .secrets
create .secrets/redis.env
create k8s/components/redis-shards/redis-auth.env
