# syntax=docker/dockerfile:1
# The cloud side: the inference service (`autoglm cloud serve`) and the model toolkit
# (`autoglm models build|eval|list`), in one image.
#
#   docker build -f deploy/docker/cloud.Dockerfile -t autoglm-cloud .                          # CUDA
#   docker build -f deploy/docker/cloud.Dockerfile --build-arg FLAVOR=cpu -t autoglm-cloud:cpu .
#   docker run --gpus all -p 50051:50051 -v /srv/autoglm/packs:/packs:ro \
#       -v /etc/autoglm/tokens:/etc/autoglm/tokens:ro autoglm-cloud
#
# FLAVOR=cuda (the default): the nvidia/cuda base image (Ubuntu 22.04) with Python 3.11 from the
#   deadsnakes PPA (Ubuntu 22.04's own python3 is 3.10; the project needs 3.11). torch's wheels on
#   PyPI bring their own CUDA and cuDNN libraries, so the small `base` variant of the CUDA image is
#   enough: what it adds is NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES, with which the
#   NVIDIA Container Toolkit mounts the host's driver (`docker run --gpus all`). The host's driver
#   must support the CUDA version torch was built with: `python -c 'import torch;
#   print(torch.version.cuda)'` in the image; `nvidia-smi` on the host shows the driver's.
# FLAVOR=cpu: python:3.11-slim and the CPU wheel of torch (constraints-cpu.txt pins the version,
#   PyTorch's CPU index provides the +cpu build), a fraction of the size; the same code runs
#   (`--device auto` picks the CPU). docker-compose.yml builds this one.
ARG FLAVOR=cuda
ARG CUDA_BASE=nvidia/cuda:12.4.1-base-ubuntu22.04
ARG CPU_BASE=python:3.11-slim

FROM ${CUDA_BASE} AS base-cuda
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y --auto-remove gpg-agent software-properties-common \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/autoglm/venv

FROM ${CPU_BASE} AS base-cpu
RUN python3.11 -m venv /opt/autoglm/venv

FROM base-${FLAVOR}
ARG FLAVOR
ENV PATH=/opt/autoglm/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/autoglm/src
COPY pyproject.toml constraints-cpu.txt README.md ./
COPY cloud ./cloud
COPY edge ./edge
COPY shared ./shared
RUN case "$FLAVOR" in \
      cpu) pip install -c constraints-cpu.txt --extra-index-url https://download.pytorch.org/whl/cpu '.[cloud]' ;; \
      *) pip install '.[cloud]' ;; \
    esac

# A dedicated user; /packs is created here so that a fresh named volume mounted on it (compose's
# `packs`) belongs to that user too.
RUN groupadd --system --gid 10001 autoglm \
 && useradd --system --uid 10001 --gid autoglm --home-dir /var/lib/autoglm --create-home \
      --shell /usr/sbin/nologin autoglm \
 && install -d -o autoglm -g autoglm /packs /etc/autoglm
USER 10001:10001
WORKDIR /var/lib/autoglm

# gRPC (Inference, ModelStore, health, reflection). The Prometheus page (--metrics-port) listens
# on the container's loopback only: read it with `docker exec` or a sidecar, it is not published.
EXPOSE 50051
# The server drains on SIGTERM for drain_grace_s (10 s by default): give `docker stop` more time
# (`--stop-timeout 30`, compose's stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["autoglm", "health", "127.0.0.1:50051"]
ENTRYPOINT ["autoglm"]
CMD ["cloud", "serve", "--pack", "/packs/demo/latest", "--packs-dir", "/packs", "--listen", "0.0.0.0:50051", "--tokens-file", "/etc/autoglm/tokens", "--device", "auto"]
