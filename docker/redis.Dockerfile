# The kit's Redis shard image: redis-server as uid 10001, no persistence (a channel layer holds
# only in-flight messages), data dir on a tmpfs given at run time. REDIS_BASE defaults to the
# public image; the offline build passes a Debian base that includes redis-server.
ARG REDIS_BASE=redis:7-bookworm
FROM ${REDIS_BASE}
LABEL org.opencontainers.image.title="channel-layer-kit-redis" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Redis shard for the kit's sharded channel layer"
RUN groupadd --gid 10001 kit \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin kit \
    && mkdir -p /data && chown 10001:10001 /data
WORKDIR /data
USER 10001:10001
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD redis-cli -p 6379 ping | grep -q PONG
ENTRYPOINT ["redis-server"]
CMD ["--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", \
     "--appendonly", "no", "--dir", "/data", "--maxmemory", "256mb", \
     "--maxmemory-policy", "noeviction"]
