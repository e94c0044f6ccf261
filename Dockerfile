# syntax=docker/dockerfile:1
# Two stages from the same base, pinned by digest (`make pin-images` refreshes the pins): the
# builder installs exactly uv.lock's runtime dependencies and the project (as a wheel, with
# its Lua scripts) into /opt/venv with the hash-checked uv of deploy/uv-requirements.txt;
# the final image gets only /opt/venv.
#
#   make image    (docker build with the version and the git revision as build arguments)
#   docker run --rm -p 8080:8080 -p 9090:9090 -v "$PWD/deploy/config/dev.toml:/etc/group-counter/config.toml:ro" <the image make image names>
#
# ENTRYPOINT + CMD are exactly the Deployment's command + args (tests/test_deploy.py checks).

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
COPY deploy/uv-requirements.txt ./
RUN pip install --require-hashes -r uv-requirements.txt
# The dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-install-project --no-editable
COPY service ./service
COPY lua ./lua
COPY docs/openapi.json ./docs/openapi.json
# The project as a wheel: it ships lua/ as service/lua and docs/openapi.json as
# service/openapi.json (pyproject's hatch force-include).
RUN uv sync --frozen --no-editable

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/venv /opt/venv
# What build this is: `make image` passes both; VERSION's default is pyproject's version
# (tests/test_deploy.py checks), so a plain `docker build` labels it right too. The service
# reads the revision from GROUP_COUNTER_REVISION (--version, the log, group_counter_build_info).
ARG VERSION=0.2.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="group-counter" \
      org.opencontainers.image.description="Self-hosted group counters speaking the hosted chat platform's REST commands, on Redis" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION"
ENV GROUP_COUNTER_REVISION=$REVISION
# No passwd entry needed: numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 8080 the API, 9090 /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "service"]
CMD ["--host", "0.0.0.0", "--port", "8080", "--metrics-port", "9090", "--config", "/etc/group-counter/config.toml"]
