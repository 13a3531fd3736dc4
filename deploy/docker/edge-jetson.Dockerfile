# syntax=docker/dockerfile:1
# The edge daemon on an NVIDIA Jetson (JetPack 6, L4T r36, Ubuntu 22.04, arm64): ONNX Runtime with
# the TensorRT and CUDA execution providers, no torch. Build it on the Jetson (or with
# `docker buildx --platform linux/arm64`) and run it with NVIDIA's container runtime:
#
#   docker build -f deploy/docker/edge-jetson.Dockerfile \
#       --build-arg ORT_INDEX_URL=https://pypi.jetson-ai-lab.io/jp6/cu126 -t autoglm-edge:jetson .
#   (that index, as an example, is the Jetson AI Lab's for JetPack 6 with CUDA 12.6: check its
#   current address on jetson-ai-lab.com; or bring your own wheel:)
#   docker build -f deploy/docker/edge-jetson.Dockerfile \
#       --build-arg ORT_WHEEL=wheels/onnxruntime_gpu-1.20.0-cp311-cp311-linux_aarch64.whl \
#       -t autoglm-edge:jetson .
#   docker run --runtime nvidia --network host -v /etc/autoglm:/etc/autoglm:ro \
#       -v /opt/autoglm/packs:/opt/autoglm/packs:ro -v autoglm-state:/var/lib/autoglm autoglm-edge:jetson
#
# How onnxruntime-gpu gets in (the choice, and why):
# - PyPI has no onnxruntime-gpu for Jetson: its aarch64 wheels (where they exist) are built for
#   SBSA servers, not for the Jetson's integrated GPU and JetPack's CUDA/TensorRT. NVIDIA's Jetson
#   AI Lab pip index (ORT_INDEX_URL; the path names the JetPack and CUDA release) or a wheel you
#   built or downloaded yourself (ORT_WHEEL, a path inside the build context) provide it. One of
#   the two is required; the build stops with a message otherwise. The wheel must match this
#   image's Python (cp311), the JetPack release of L4T_BASE, and be onnxruntime-gpu >= 1.19.
# - That wheel is installed FIRST and pinned; then `pip install '.[edge-gpu]'` finds its
#   onnxruntime-gpu requirement already satisfied by the pinned Jetson build and installs only the
#   rest. The `edge` extra is never used here: it would add the CPU `onnxruntime`, which ships the
#   same Python module and must never be installed beside onnxruntime-gpu. The build checks both.
# - The base image carries CUDA, cuDNN and TensorRT of that JetPack release; ONNX Runtime loads
#   them when the session is created. Which providers a session really got is what the daemon
#   logs and exports (`autoglm_edge_model_info{providers=...}`): see docs/operations.md.
# r36.4: JetPack 6.1/6.2 (CUDA 12.6, cuDNN 9, TensorRT 10.3). Match it to the device's JetPack
# (`cat /etc/nv_tegra_release` on the Jetson) and the wheel to both.
ARG L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${L4T_BASE}
ARG ORT_INDEX_URL=
ARG ORT_WHEEL=
ENV DEBIAN_FRONTEND=noninteractive
# Python 3.11 from the deadsnakes PPA (L4T r36 is Ubuntu 22.04, whose python3 is 3.10).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y --auto-remove gpg-agent software-properties-common \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/autoglm/venv
ENV PATH=/opt/autoglm/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. The Jetson build of onnxruntime-gpu, from the wheel given or the index given, then pinned.
RUN --mount=type=bind,target=/context \
    if [ -n "$ORT_WHEEL" ]; then \
      pip install "/context/$ORT_WHEEL"; \
    elif [ -n "$ORT_INDEX_URL" ]; then \
      pip download --no-deps --index-url "$ORT_INDEX_URL" --dest /tmp/ort 'onnxruntime-gpu>=1.19' \
      && pip install /tmp/ort/*.whl && rm -rf /tmp/ort; \
    else \
      echo "set --build-arg ORT_INDEX_URL=... or --build-arg ORT_WHEEL=... (see the top of this file)" >&2; \
      exit 1; \
    fi \
 && python -c "import importlib.metadata as m; print('onnxruntime-gpu==' + m.version('onnxruntime-gpu'))" \
      > /opt/autoglm/onnxruntime-pin.txt \
 && python -c "import onnxruntime as ort; p = ort.get_available_providers(); print(p); assert 'CUDAExecutionProvider' in p, 'not a GPU build of onnxruntime'"

# 2. The project with the edge-gpu extra, held to that build: no CPU onnxruntime, no torch.
WORKDIR /opt/autoglm/src
COPY pyproject.toml README.md ./
COPY edge ./edge
COPY shared ./shared
RUN pip install -c /opt/autoglm/onnxruntime-pin.txt '.[edge-gpu]' \
 && if pip show --quiet onnxruntime torch 2>/dev/null; then \
      echo "the CPU onnxruntime or torch was installed beside onnxruntime-gpu" >&2; exit 1; \
    fi

# A dedicated user; on L4T the GPU's device nodes (/dev/nvhost-*, /dev/nvmap) belong to `video`.
RUN groupadd --system --gid 10001 autoglm \
 && useradd --system --uid 10001 --gid autoglm --groups video --home-dir /var/lib/autoglm \
      --create-home --shell /usr/sbin/nologin autoglm \
 && install -d -o autoglm -g autoglm /run/autoglm /etc/autoglm
COPY deploy/systemd/edge.toml.example /etc/autoglm/edge.toml.example
USER 10001:10001
WORKDIR /var/lib/autoglm

EXPOSE 50061
# The first start builds the TensorRT engine (minutes); later starts load it from
# `onnx.trt_cache_dir` (default /var/lib/autoglm/trt-cache): keep /var/lib/autoglm on a volume.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["autoglm", "health", "127.0.0.1:50061"]
ENTRYPOINT ["autoglm"]
CMD ["edge", "serve", "--config", "/etc/autoglm/edge.toml", "--state-dir", "/var/lib/autoglm"]
