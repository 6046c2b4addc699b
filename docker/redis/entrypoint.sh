#!/bin/sh
# Starts redis-server with the kit's users, never with an open default user:
#   default          off (no unauthenticated command at all)
#   $REDIS_USERNAME  (default "layer") the channel layer: the commands of layer.acl, keys under
#                    $REDIS_KEY_PATTERNS only (default "asgi:*", the layer's default prefix)
#   admin            only if $REDIS_ADMIN_PASSWORD is set: every command, for a human
# Passwords come from the environment (a Kubernetes Secret or the compose env file); only their
# SHA-256 reaches the ACL file, which is private to this uid. Arguments go to redis-server.
set -eu
set -f  # key patterns hold '*': never glob them

: "${REDIS_PASSWORD:?REDIS_PASSWORD must hold the layer user's password (see docs/redis.md)}"
user=${REDIS_USERNAME:-layer}
patterns=${REDIS_KEY_PATTERNS:-asgi:*}
acl=${REDIS_ACL_FILE:-/data/users.acl}
rules=${REDIS_ACL_RULES:-/etc/channel-layer-kit/layer.acl}

sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

keys=""
for pattern in $patterns; do keys="$keys ~$pattern"; done
commands=$(grep -v '^[[:space:]]*#' "$rules" | tr '\n' ' ')

umask 077
{
    echo "user default off resetkeys resetchannels -@all"
    echo "user $user on #$(sha "$REDIS_PASSWORD") resetkeys resetchannels$keys $commands"
    if [ -n "${REDIS_ADMIN_PASSWORD:-}" ]; then
        echo "user admin on #$(sha "$REDIS_ADMIN_PASSWORD") ~* &* +@all"
    fi
} >"$acl"
unset REDIS_PASSWORD REDIS_ADMIN_PASSWORD
exec redis-server "$@" --aclfile "$acl"
