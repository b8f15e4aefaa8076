# syntax=docker/dockerfile:1
# cxr HTTP inference API: runtime + serve extras only (onnxruntime, FastAPI, uvicorn; no torch).
#   docker build -t cxr-serve .                                     # CPU image (the default target)
#   docker build -t cxr-serve --build-arg MODEL=runs/demo/ensemble.onnx .   # with a model copied in
#   docker build -t cxr-serve:gpu --target gpu .                    # CUDA image with onnxruntime-gpu
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/runs/demo/ensemble.onnx:/models/ensemble.onnx:ro" cxr-serve
# The same image runs the DICOM node (`cxr listen`, docs/dicom-node.md) with CXR_ROLE=listen:
#   docker run --rm -p 11112:11112 -e CXR_ROLE=listen -e CXR_FORWARD=PACS@10.0.0.5:104 -v cxr-spool:/spool \
#     -v "$PWD/runs/demo/ensemble.onnx:/models/ensemble.onnx:ro" cxr-serve
# The install and start steps live in docker/install.sh and docker/entrypoint.sh, which
# scripts/container_smoke.sh also runs in CI without Docker; scripts/container_build.sh builds this file
# with buildah on a debootstrap Debian base (PYTHON_IMAGE, python3 at /usr/bin) and
# scripts/container_run.sh runs and probes the image. See docker/README.md.
# PIP_INDEX_URL, PIP_CERT (build arguments): the package index the build stages install from, and a CA
# bundle for it (behind a TLS-inspecting proxy: mount it with `buildah bud -v`; empty: the default).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- CPU build stage: a venv with cxr[serve] in /opt/venv ----
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_CERT=
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cxr ./cxr
COPY docker ./docker
RUN bash docker/install.sh /opt/venv cpu /src

# ---- GPU build stage: the same, with onnxruntime-gpu instead of onnxruntime ----
FROM ${CUDA_IMAGE} AS gpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_CERT=
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cxr ./cxr
COPY docker ./docker
RUN bash docker/install.sh /opt/venv gpu /src

# ---- GPU runtime (docker build --target gpu; run with --gpus all) ----
FROM ${CUDA_IMAGE} AS gpu
ARG MODEL=docker/models
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cxr \
 && mkdir -p /models /spool /opt/cxr/trt-cache && chown cxr /spool /opt/cxr/trt-cache
COPY --from=gpu-build /opt/venv /opt/venv
COPY docker/entrypoint.sh /opt/cxr/entrypoint.sh
COPY docker/healthcheck.py /opt/cxr/healthcheck.py
COPY ${MODEL} /opt/cxr/models/
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CXR_HOST=0.0.0.0 CXR_PORT=8000 CXR_PROVIDER=cuda CXR_TRT_CACHE=/opt/cxr/trt-cache
USER 10001
EXPOSE 8000 11112
VOLUME ["/models"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/opt/venv/bin/python", "/opt/cxr/healthcheck.py"]
ENTRYPOINT ["/opt/cxr/entrypoint.sh"]

# ---- CPU runtime (the default target) ----
FROM ${PYTHON_IMAGE} AS cpu
ARG MODEL=docker/models
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cxr \
 && mkdir -p /models /spool && chown cxr /spool
COPY --from=cpu-build /opt/venv /opt/venv
COPY docker/entrypoint.sh /opt/cxr/entrypoint.sh
COPY docker/healthcheck.py /opt/cxr/healthcheck.py
COPY ${MODEL} /opt/cxr/models/
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CXR_HOST=0.0.0.0 CXR_PORT=8000 CXR_PROVIDER=auto CXR_PRECISION=auto
USER 10001
EXPOSE 8000 11112
VOLUME ["/models"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/venv/bin/python", "/opt/cxr/healthcheck.py"]
ENTRYPOINT ["/opt/cxr/entrypoint.sh"]
