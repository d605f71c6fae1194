# syntax=docker/dockerfile:1
# The tenant node: `percolate-node serve` (the percolate-node chart runs it; tests/test_helm.py
# checks this entry point against pyproject.toml's console scripts, tests/test_images.py
# installs exactly what this file installs into a clean venv and starts it). From the
# repository root:
#   docker build -f docker/node.Dockerfile -t ghcr.io/percolate/percolate-node:0.1.0 .
# The base image is pinned by digest; to move it, resolve the new digest with
# `docker buildx imagetools inspect python:3.11-slim-bookworm` and replace it here and in
# docker/reading.Dockerfile.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# 1. The node's pinned dependencies (requirements/node.lock: every transitive package with
# its hashes; no Triton, onnxruntime, OpenCV or PyAV) and the package in a virtual environment.
FROM ${PYTHON_IMAGE} AS runtime-env
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# A C compiler and OpenSSL's headers build the store's AES-GCM extension (setup.py);
# they stay in this stage: the image needs only libssl3, which the base image has.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/node.lock requirements/node.lock
RUN pip install --require-hashes --no-deps -r requirements/node.lock
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

# 2. The image: the environment only; non-root; RocksDB lives on the mounted volume
# (/var/lib/percolate, owned by the runtime user), the rest of the root filesystem is read-only.
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 percolate \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin percolate \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/percolate
COPY --from=runtime-env /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /var/lib/percolate
USER 10001:10001
EXPOSE 50061 9090
ENTRYPOINT ["percolate-node"]
CMD ["serve"]
