#!/usr/bin/env bash
# Builds the kit's container images without an image registry (this machine and CI have none):
# Debian base images from Debian packages (debootstrap + docker import, cached by content hash),
# the project's Python dependencies from a wheelhouse downloaded on the host, then the same
# Dockerfiles a registry user builds with `docker compose up --build`.
#
#   scripts/images.sh [all]     docker + bases + wheelhouse + images (what `make images` runs)
#   scripts/images.sh docker    make sure a Docker daemon answers (starts one as root if none)
#   scripts/images.sh bases     only the two Debian base images
#   scripts/images.sh wheels    only the wheelhouse (.wheelhouse/)
#   scripts/images.sh lock      re-resolve docker/requirements.lock (the image's pinned deps)
#   scripts/images.sh example   only the example app's image (examples/django-chat), FROM the app's
#
# Env: KIT_BASES=auto|offline|public (auto: public python/redis images if already present
# locally, else the offline Debian bases), KIT_TAG (default 0.1.0), DEBIAN_MIRROR, DEBIAN_SUITE.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${KIT_TAG:-0.1.0}
APP_IMAGE=${KIT_APP_IMAGE:-channel-layer-kit}:$TAG
REDIS_IMAGE=${KIT_REDIS_IMAGE:-channel-layer-kit-redis}:$TAG
EXAMPLE_IMAGE=${KIT_EXAMPLE_IMAGE:-django-chat}:$TAG
EXAMPLE_DIR=examples/django-chat
PUBLIC_PYTHON=python:3.11-slim-bookworm
PUBLIC_REDIS=redis:7-bookworm
SUITE=${DEBIAN_SUITE:-bookworm}
EXTRAS=redis,ipc,services
WHEELHOUSE=.wheelhouse
BASE_RECIPE=1 # bump when build_base changes what goes into a base image

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "missing $*; install it (apt-get install $*)"
    fi
    log "installing $*"
    # To stderr: callers such as build_base run inside $(...), whose stdout is their result.
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# A daemon that answers is used as it is; only when none answers and we are root do we start one,
# with flags (never by rewriting a user's daemon.json), on address ranges that avoid common LANs.
ensure_docker() {
    local need=()
    command -v docker >/dev/null || need+=(docker.io)
    command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
    [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
    docker info >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || die "no Docker daemon answers and not root: start Docker, then retry"
    command -v dockerd >/dev/null || apt_install docker.io
    log "no Docker daemon answers; starting dockerd (log: /tmp/dockerd.log)"
    dockerd --bip 198.19.255.1/24 --default-address-pool base=198.18.0.0/16,size=24 >/tmp/dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    tail -20 /tmp/dockerd.log >&2
    die "dockerd did not answer within 60 s"
}

# The Debian mirror apt already uses (deb822 .sources or one-line .list), so debootstrap needs
# no network beyond the package registry.
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk -v s="$SUITE" '
            /^[[:space:]]*$/ { u=""; ok=0; next }
            /^URIs:/ { u=$2 }
            /^Suites:/ { for (i=2;i<=NF;i++) if ($i==s) ok=1 }
            u!="" && ok { print u; exit }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk -v s="$SUITE" '$1=="deb" && $0 !~ /\[/ && $3==s { print $2; exit }
                                 $1=="deb" && $2 ~ /^\[/ && $4==s { print $3; exit }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    die "no apt source for suite $SUITE in /etc/apt; set DEBIAN_MIRROR to a Debian mirror URL"
}

# Base image NAME-HASH from Debian packages; the tag hashes everything that shapes its content,
# so a present image is reused (seconds) and a changed package list builds a new one.
build_base() {
    local kind=$1 include=$2 mirror hash image dir
    mirror=$(debian_mirror)
    hash=$(printf '%s|%s|%s|%s' "$BASE_RECIPE" "$SUITE" "$include" "$mirror" | sha256sum | cut -c1-12)
    image="channel-layer-kit-base-$kind:$SUITE-$hash"
    if docker image inspect "$image" >/dev/null 2>&1; then
        log "base $image cached"
        echo "$image"
        return
    fi
    command -v debootstrap >/dev/null || apt_install debootstrap
    dir=$(mktemp -d /tmp/kit-base-XXXXXX)
    log "debootstrap $SUITE ($include) from $mirror -> $image (a few minutes, once)"
    debootstrap --variant=minbase --include="$include" "$SUITE" "$dir" "$mirror" >"$dir.log" 2>&1 \
        || { tail -30 "$dir.log" >&2; rm -rf "$dir" "$dir.log"; die "debootstrap failed"; }
    # What an image never needs: package caches, docs, man pages, locales.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
        "$dir"/usr/share/locale/* "$dir"/var/log/*.log "$dir"/var/cache/debconf/*-old
    tar --numeric-owner -C "$dir" -c . | docker import \
        --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase --include=$include $SUITE $mirror" - "$image" >/dev/null
    rm -rf "$dir" "$dir.log"
    log "base $image built"
    echo "$image"
}

# Host-side wheelhouse: every pinned dependency as a wheel (built here for sdists such as
# posix_ipc: the host and the image are both Debian bookworm with Python 3.11).
build_wheels() {
    local py=${PYTHON:-python3} stamp=$WHEELHOUSE/.stamp key
    key=$(sha256sum <docker/requirements.lock | cut -c1-16)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        log "wheelhouse cached"
    else
        log "filling $WHEELHOUSE (pip wheel, host network to the package index only)"
        rm -rf "$WHEELHOUSE"
        mkdir -p "$WHEELHOUSE"
        "$py" -m pip wheel -q --wheel-dir "$WHEELHOUSE" -r docker/requirements.lock \
            >"$WHEELHOUSE/.pip.log" 2>&1 || { cat "$WHEELHOUSE/.pip.log" >&2; die "pip wheel failed"; }
        echo "$key" >"$stamp"
    fi
}

# Exact pins for the image, resolved from pyproject's runtime extras (commit the result).
lock_requirements() {
    local py=${PYTHON:-python3} report
    report=$(mktemp)
    # async-timeout: redis-py needs it on Python < 3.11.3, and Debian bookworm ships 3.11.2;
    # resolving here on a newer host Python would leave it out. setuptools and wheel build the
    # project itself inside the image (the build stage drops them).
    "$py" -m pip install -q --dry-run --ignore-installed --report "$report" ".[$EXTRAS]" \
        async-timeout "setuptools>=68" wheel
    {
        echo "# Runtime dependencies of the images, pinned (scripts/images.sh lock regenerates)."
        "$py" -c 'import json, sys
meta = [d["metadata"] for d in json.load(open(sys.argv[1]))["install"]]
print("\n".join(sorted(m["name"] + "==" + m["version"] for m in meta
                        if m["name"] != "channel-layer-kit")))' "$report"
    } >docker/requirements.lock
    rm -f "$report"
    log "wrote docker/requirements.lock"
}

# Which bases the Dockerfiles build FROM: the public ones when present, else the Debian ones.
choose_bases() {
    local mode=${KIT_BASES:-auto}
    if [ "$mode" = auto ]; then
        if docker image inspect "$PUBLIC_PYTHON" >/dev/null 2>&1 \
            && docker image inspect "$PUBLIC_REDIS" >/dev/null 2>&1; then
            mode=public
        else
            mode=offline
        fi
    fi
    case $mode in
        public) PYTHON_BASE=$PUBLIC_PYTHON; REDIS_BASE=$PUBLIC_REDIS ;;
        offline)
            PYTHON_BASE=$(build_base python python3,python3-venv)
            REDIS_BASE=$(build_base redis redis-server)
            ;;
        *) die "KIT_BASES must be auto, offline or public, not '$mode'" ;;
    esac
    log "bases: $PYTHON_BASE, $REDIS_BASE"
}

# No network inside the build: whatever the image needs is in its context or its base.
# The classic builder, since the docker CLI here may have no buildx plugin.
build() {
    local image=$1 dockerfile=$2 context=$3 arg=$4 logfile=.cache/images/build-${1%%:*}.log
    mkdir -p .cache/images
    log "building $image"
    DOCKER_BUILDKIT=0 docker build --force-rm --network none -f "$dockerfile" --build-arg "$arg" \
        -t "$image" "$context" >"$logfile" 2>&1 || { tail -40 "$logfile" >&2; die "building $image failed"; }
}

# The example app's image, FROM the app image, built by its own Dockerfile: the one a user
# writes, whose `pip install -r requirements.txt` would reach the package index. Offline, pip
# finds the example's requirements in a host wheelhouse instead, which a throwaway image on top
# of the app image holds and points pip at (PIP_NO_INDEX, PIP_FIND_LINKS); the example is built
# FROM that one, so the test image carries those wheels (a few MB) and those two variables.
build_example() {
    local py=${PYTHON:-python3} wheels=$EXAMPLE_DIR/.wheelhouse key
    local feeder=${APP_IMAGE%%:*}-example-wheels:$TAG
    key=$(sha256sum <"$EXAMPLE_DIR/requirements.txt" | cut -c1-16)
    if [ -f "$wheels/.stamp" ] && [ "$(cat "$wheels/.stamp")" = "$key" ]; then
        log "example wheelhouse cached"
    else
        log "filling $wheels (pip wheel, host network to the package index only)"
        rm -rf "$wheels"
        mkdir -p "$wheels"
        "$py" -m pip wheel -q --wheel-dir "$wheels" -r "$EXAMPLE_DIR/requirements.txt" \
            >"$wheels/.pip.log" 2>&1 || { cat "$wheels/.pip.log" >&2; die "pip wheel failed"; }
        echo "$key" >"$wheels/.stamp"
    fi
    mkdir -p .cache/images
    printf 'FROM %s\nCOPY . /wheels/\nENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels\n' "$APP_IMAGE" \
        >.cache/images/example-wheels.Dockerfile
    build "$feeder" .cache/images/example-wheels.Dockerfile "$wheels" "KIT_IMAGE=$APP_IMAGE"
    build "$EXAMPLE_IMAGE" "$EXAMPLE_DIR/Dockerfile" "$EXAMPLE_DIR" "KIT_IMAGE=$feeder"
}

build_images() {
    choose_bases
    build_wheels
    build "$APP_IMAGE" docker/app.Dockerfile . "PYTHON_BASE=$PYTHON_BASE"
    build "$REDIS_IMAGE" docker/redis.Dockerfile docker "REDIS_BASE=$REDIS_BASE"
    build_example
    docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
        | grep -E "^(${APP_IMAGE%%:*}|${REDIS_IMAGE%%:*}|${EXAMPLE_IMAGE%%:*}):$TAG " >&2
}

case ${1:-all} in
    docker) ensure_docker ;;
    bases) ensure_docker; KIT_BASES=offline choose_bases ;;
    wheels) build_wheels ;;
    lock) lock_requirements ;;
    example) ensure_docker; build_example ;;
    all) ensure_docker; build_images ;;
    *) die "usage: $0 [all|docker|bases|wheels|lock|example]" ;;
esac
