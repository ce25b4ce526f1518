# syntax=docker/dockerfile:1
# Build: docker build -t video-billing-gateway .
# Run:   docker run -p 8000:8000 -e GATEWAY_DATABASE_URL=postgresql://... \
#          -e GATEWAY_UPSTREAM_API_KEY=... -e GATEWAY_KEY_PEPPER=... -e GATEWAY_ADMIN_TOKEN=... \
#          video-billing-gateway
# Migrations: run `gateway db upgrade` once per release (a Kubernetes Job / init container),
# or add --migrate to the command for a single-replica deployment.

# An exact tag, the same in both stages (bump both together; pin a digest in your registry).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE alembic.ini ./
COPY gateway ./gateway
COPY migrations ./migrations
RUN pip install --no-cache-dir build==1.2.2 \
 && python -m build --wheel --outdir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt /wheels/*.whl

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="video-billing-gateway" \
      org.opencontainers.image.description="Billing-aware API gateway in front of the grok-imagine-video API" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.7-slim-bookworm"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_ENVIRONMENT=production \
    GATEWAY_LOG_FORMAT=json
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/video_billing_gateway-*.whl \
 && rm -rf /wheels
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
