# syntax=docker/dockerfile:1
# Two stages from the same base: the builder makes a wheel of the project and installs
# it with its runtime dependencies into /opt/venv; the final image gets only /opt/venv.
#
#   docker build -t group-counter:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 -v "$PWD/deploy/config/dev.toml:/etc/group-counter/config.toml:ro" group-counter:0.1.0
#
# ENTRYPOINT + CMD are exactly the Deployment's command + args (tests/test_deploy.py checks).

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY lua ./lua
COPY docs/openapi.json ./docs/openapi.json
# The wheel ships lua/ as service/lua and docs/openapi.json as service/openapi.json
# (pyproject's hatch force-include).
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/*.whl

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/venv /opt/venv
# No passwd entry needed: numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 8080 the API, 9090 /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "service"]
CMD ["--host", "0.0.0.0", "--port", "8080", "--metrics-port", "9090", "--config", "/etc/group-counter/config.toml"]
