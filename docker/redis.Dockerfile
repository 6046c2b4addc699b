# The kit's Redis shard image: redis-server as uid 10001, no persistence (a channel layer holds
# only in-flight messages), data dir on a tmpfs given at run time. REDIS_BASE defaults to the
# public image; the offline build passes a Debian base that includes redis-server.
# The entrypoint (redis/entrypoint.sh) starts it with the kit's ACL users: the default user off,
# the layer's user limited to redis/layer.acl's commands and its key prefix, its password from
# REDIS_PASSWORD (docs/redis.md). `redis-ready` is the health check: PONG or not ready.
ARG REDIS_BASE=redis:7-bookworm
FROM ${REDIS_BASE}
LABEL org.opencontainers.image.title="channel-layer-kit-redis" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Redis shard for the kit's sharded channel layer"
RUN groupadd --gid 10001 kit \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin kit \
    && mkdir -p /data && chown 10001:10001 /data
COPY redis/entrypoint.sh /usr/local/bin/redis-kit-entrypoint
COPY redis/ready.sh /usr/local/bin/redis-ready
COPY redis/layer.acl /etc/channel-layer-kit/layer.acl
WORKDIR /data
USER 10001:10001
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["redis-ready", "6379"]
ENTRYPOINT ["redis-kit-entrypoint"]
# IPv4 and, where the host has it, IPv6 (`-::*`: skipped when unavailable).
CMD ["--port", "6379", "--bind", "* -::*", "--protected-mode", "yes", "--save", "", \
     "--appendonly", "no", "--dir", "/data", "--maxmemory", "256mb", \
     "--maxmemory-policy", "noeviction"]
