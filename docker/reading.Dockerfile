# syntax=docker/dockerfile:1
# The reading frontend: `percolate-reading serve`, plus the built model repository that
# the percolate-reading chart's init step copies into the pod for Triton (the official
# Triton container serves it on the GPU). From the repository root, with BuildKit (which
# reads docker/reading.Dockerfile.dockerignore):
#   docker build -f docker/reading.Dockerfile -t ghcr.io/percolate/percolate-reading:0.1.0 .
# tests/test_images.py installs exactly what this file installs into a clean venv and starts it.
# The base image is pinned by digest (see docker/node.Dockerfile for how to move it).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# 1. The frontend's pinned dependencies (requirements/reading.lock: every transitive package
# with its hashes; no torch, Triton or RocksDB) and the package in a virtual environment.
FROM ${PYTHON_IMAGE} AS runtime-env
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# A C compiler and OpenSSL's headers build the store's AES-GCM extension (setup.py);
# they stay in this stage: the image needs only libssl3, which the base image has.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements ./requirements
RUN pip install --require-hashes --no-deps -r requirements/reading.lock
COPY pyproject.toml setup.py README.md ./
COPY percolate ./percolate
COPY percolate_models ./percolate_models
COPY percolate_triton ./percolate_triton
COPY percolate_certs ./percolate_certs
COPY percolate_common ./percolate_common
COPY percolate_node ./percolate_node
COPY percolate_demo ./percolate_demo
COPY reading_frontend ./reading_frontend
RUN pip install --no-deps --no-build-isolation --no-compile .

# 2. The model build (`percolate-models build`: packaged weights -> ONNX, offline). The
# export tools (torch, CPU build; optimum) stay in this stage, never in the image. Only
# torch's CPU build comes from download.pytorch.org (a find-links page that lists torch
# alone, so no other package can be taken from there); everything is hash-checked.
FROM runtime-env AS models
ENV HF_HUB_OFFLINE=1 \
    PERCOLATE_MODEL_REPOSITORY=/src/model_repository PERCOLATE_MODEL_ASSETS=/src/model_assets \
    PERCOLATE_CACHE_DIR=/tmp/percolate-build
RUN pip install --require-hashes --no-deps --find-links https://download.pytorch.org/whl/torch/ \
      -r requirements/export.lock
COPY model_repository ./model_repository
RUN percolate-models build && percolate-models verify

# 3. The image: the environment and the built repository, nothing else; non-root, and
# nothing written outside /tmp (the chart mounts the root filesystem read-only).
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 percolate \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin percolate
COPY --from=runtime-env /opt/venv /opt/venv
COPY --from=models /src/model_repository /app/model_repository
COPY --from=models /src/model_assets /app/model_assets
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PERCOLATE_MODEL_REPOSITORY=/app/model_repository PERCOLATE_MODEL_ASSETS=/app/model_assets \
    PERCOLATE_CACHE_DIR=/tmp/percolate
WORKDIR /app
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["percolate-reading"]
CMD ["serve"]
