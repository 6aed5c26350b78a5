# syntax=docker/dockerfile:1
# authproxy image: listens on 0.0.0.0:8080 with proxy_auth required, admin on 9090
# (its token from the AUTHPROXY_ADMIN_TOKEN variable; the proxy refuses to start without it).
# Build: docker build -t authproxy:local .     Run: see docker-compose.yml and the README.
# The base is pinned to an exact release; to pin the digest as well, replace the tag
# with the output of `docker buildx imagetools inspect python:3.11.14-slim-bookworm`
# (tag@sha256:...) in both FROM lines.

# --- build: a wheel for authproxy and one for each dependency -----------------
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, authproxy/ and docker/.
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: the wheels installed, no build tools, no pip cache --------------
FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="authproxy" \
      org.opencontainers.image.description="A forward HTTP(S) proxy that adds credentials to outbound requests" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The wheels are bind-mounted from the build stage, so they never land in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/authproxy-*.whl \
 && groupadd --system --gid 10001 authproxy \
 && useradd --system --no-log-init --uid 10001 --gid authproxy \
      --home-dir /var/lib/authproxy --no-create-home --shell /usr/sbin/nologin authproxy \
 && install -d -m 0700 -o authproxy -g authproxy /var/lib/authproxy
COPY docker/routes.yaml /etc/authproxy/routes.yaml
# The local CA and the token store. A new named volume copies this dir's owner and 0700 mode.
VOLUME ["/var/lib/authproxy"]
USER 10001:10001
WORKDIR /var/lib/authproxy
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# The admin listener's /healthz, which needs no token (every other admin path does) and
# is asked as 127.0.0.1, an address of the container's own; no proxy, no curl needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:9090/healthz', timeout=4)"]
ENTRYPOINT ["authproxy", "run", "-c", "/etc/authproxy/routes.yaml", "--listen", "0.0.0.0:8080"]
