# The kit's application image: protocol server, worker and combined mode are this one image with
# different commands (`layerkit protocol|worker|combined`). PYTHON_BASE defaults to the public
# image; the offline build (scripts/images.sh) passes a Debian base built with debootstrap.
# Dependencies, pinned by docker/requirements.lock, come from .wheelhouse/ when the build context
# has one (offline: pip never touches the network), else from the package index. pip stays in
# the image: an app's image builds FROM this one and installs its own requirements
# (examples/django-chat/Dockerfile).
ARG PYTHON_BASE=python:3.11-slim-bookworm

FROM ${PYTHON_BASE} AS build
# `.wheelhouse*` matches nothing when there is no wheelhouse; the lock alone is then copied.
COPY docker/requirements.lock .wheelhouse* /wheels/
RUN set -eu; \
    if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir "$@" -r /wheels/requirements.lock
COPY . /src
RUN set -eu; \
    if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; fi; \
    /opt/venv/bin/pip install --no-cache-dir --no-deps "$@" /src; \
    /opt/venv/bin/pip uninstall -q -y setuptools wheel; \
    /opt/venv/bin/layerkit --help >/dev/null

FROM ${PYTHON_BASE}
LABEL org.opencontainers.image.title="channel-layer-kit" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Protocol server, worker and combined mode (layerkit)"
RUN groupadd --gid 10001 kit \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin kit
COPY --from=build /opt/venv /opt/venv
COPY config /app/config
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KIT_HOST=0.0.0.0 \
    KIT_ADMIN_HOST=0.0.0.0 \
    KIT_PORT=8000 \
    KIT_ADMIN_PORT=8081
USER 10001:10001
EXPOSE 8000 8081
# Every role serves /healthz on its admin port; urllib keeps curl out of the image.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 CMD ["python3", "-c", \
    "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KIT_ADMIN_PORT', '8081') + '/healthz', timeout=2)"]
ENTRYPOINT ["layerkit"]
CMD ["combined"]
