# syntax=docker/dockerfile:1
# archaudit operator and CLI image: `archaudit run` by default, `archaudit check IMAGE` on demand.
#
# Multi-arch with buildx (linux/amd64, linux/arm64, linux/arm/v7). Every runtime dependency has a wheel
# for amd64 and arm64. On arm/v7 two do not (PyPI, checked for the versions in constraints.txt):
# cffi (needed by cryptography) is compiled, so the builder installs gcc + libffi-dev there only, and
# PyYAML builds from its sdist without libyaml (its pure-Python loader; no extra runtime library).
# uvloop (the operator's event loop) has no arm/v7 wheel: pyproject's marker leaves it out there, and
# the operator falls back to asyncio's loop.
# The final stage copies the virtualenv alone: no compilers, no pip, no caches.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TARGETARCH
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
# The official python image ships Python.h; a Debian-packaged python (hack/build-image.sh's local base)
# needs python3-dev for it. Either way only this stage has them.
RUN if [ "$TARGETARCH" = "arm" ]; then \
      pkgs="gcc libc6-dev libffi-dev"; \
      python -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_path("include") + "/Python.h"))' \
        || pkgs="$pkgs python3-dev"; \
      apt-get update \
      && apt-get install -y --no-install-recommends $pkgs \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
# Dependencies first: this layer is reused until constraints.txt or pyproject.toml change. The `aws`
# extra (botocore, for ECR credentials) is in the image; it is imported only when an ECR image is met.
COPY pyproject.toml constraints.txt README.md ./
RUN python -m venv --without-pip /opt/archaudit \
    && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["aws"]))' \
       > /tmp/requirements.txt
RUN pip --python /opt/archaudit/bin/python install -c constraints.txt -r /tmp/requirements.txt
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip --python /opt/archaudit/bin/python install --no-deps /wheels/archaudit-*.whl \
    && /opt/archaudit/bin/archaudit --help >/dev/null

FROM ${PYTHON_IMAGE}
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="archaudit" \
      org.opencontainers.image.description="Stop pods whose container images cannot run on the nodes they may land on (mixed-architecture Kubernetes)." \
      org.opencontainers.image.source="https://github.com/archaudit/archaudit" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=builder /opt/archaudit /opt/archaudit
ENV PATH=/opt/archaudit/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The distroless "nonroot" uid, which the chart's securityContext also names.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8443 9102
ENTRYPOINT ["archaudit"]
CMD ["run"]
