# avx-gateway container: multi-stage, slim, non-root, `twistd -n avx-gateway`.
#   docker build -t avx-gateway .
#   docker run --rm -p 8080:8080 -v $PWD/config/gateway.toml:/etc/avx-gateway/gateway.toml:ro avx-gateway
FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY avx_twisted ./avx_twisted
COPY twisted ./twisted
RUN python -m venv /opt/avx-gateway \
 && /opt/avx-gateway/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/avx-gateway/bin/pip install --no-cache-dir . \
 # twistd caches its plugin index; build it now, the image is read-only at run time.
 && /opt/avx-gateway/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin avx
COPY --from=build /opt/avx-gateway /opt/avx-gateway
COPY config/gateway.toml /etc/avx-gateway/gateway.toml
ENV PATH=/opt/avx-gateway/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
# SIGTERM drains in-flight requests (server.drain_timeout_ms) and exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"
ENTRYPOINT ["twistd", "-n", "--pidfile=", "avx-gateway"]
CMD ["--config", "/etc/avx-gateway/gateway.toml"]
