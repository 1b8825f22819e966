# avx-gateway container: multi-stage, slim, non-root, `avx-gateway run` in the foreground.
#   docker build -t avx-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 avx-gateway:0.1.0 demo      # built-in demo, no config needed
#   docker run --rm -p 8080:8080 \
#       -v "$PWD/gateway.toml:/etc/avx-gateway/gateway.toml:ro" avx-gateway:0.1.0
# The image holds no config: without one mounted at /etc/avx-gateway/gateway.toml, `run` exits 2
# naming the missing file. Details: docs/deployment.md ("Docker").
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# What is copied is decided by .dockerignore (tests, docs, venvs and VCS data stay out).
COPY . .
RUN python -m venv /opt/avx-gateway \
 && /opt/avx-gateway/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/avx-gateway/bin/pip install --no-cache-dir . \
 # twistd caches its plugin index; build it now, the image is read-only at run time.
 && /opt/avx-gateway/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 # The HEALTHCHECK probe: 200 from the first URL that answers; proxies from the environment
 # are ignored. AVX_HEALTHCHECK_URLS overrides the list (space-separated).
 && printf '%s\n' \
    'import os, sys, urllib.request' \
    'URLS = "http://127.0.0.1:8081/healthz http://127.0.0.1:8080/healthz"' \
    'opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))' \
    'for url in os.environ.get("AVX_HEALTHCHECK_URLS", URLS).split():' \
    '    try:' \
    '        with opener.open(url, timeout=2) as answer:' \
    '            sys.exit(0 if answer.status == 200 else 1)' \
    '    except OSError:' \
    '        continue' \
    'sys.exit(1)' \
    > /opt/avx-gateway/healthcheck.py

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="avx-gateway" \
      org.opencontainers.image.description="An API gateway and reverse proxy on Twisted" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
RUN groupadd --system --gid 10001 avx \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin avx \
 && install -d -m 0755 /etc/avx-gateway
COPY --from=build /opt/avx-gateway /opt/avx-gateway
# AVX_DEMO_HOST: `avx-gateway demo` listens on all interfaces, so `-p 8080:8080` reaches it.
ENV PATH=/opt/avx-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AVX_DEMO_HOST=0.0.0.0
USER 10001:10001
# 8080 data plane; 8081 and 9090 are the conventional [health] and [metrics] listeners.
EXPOSE 8080 8081 9090
# SIGTERM: server.shutdown_delay_ms, then drain for server.drain_timeout_ms, exit 0. Give
# `docker stop -t` more than their sum (its default is 10 s).
STOPSIGNAL SIGTERM
# Liveness: /healthz on the [health] listener (8081) if there is one, else on the data plane.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "/opt/avx-gateway/healthcheck.py"]
ENTRYPOINT ["avx-gateway"]
CMD ["run", "--config", "/etc/avx-gateway/gateway.toml"]
