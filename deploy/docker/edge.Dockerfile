# syntax=docker/dockerfile:1
# The edge daemon (`autoglm edge serve`) on a CPU device: amd64 or arm64 (python:3.11-slim is
# multi-arch), ONNX Runtime's CPU build, no torch. For a Jetson use edge-jetson.Dockerfile.
#
#   docker build -f deploy/docker/edge.Dockerfile -t autoglm-edge .
#   docker buildx build --platform linux/arm64 -f deploy/docker/edge.Dockerfile -t autoglm-edge:arm64 .
#   docker run -v /etc/autoglm:/etc/autoglm:ro -v /opt/autoglm/packs:/opt/autoglm/packs:ro \
#       -v autoglm-state:/var/lib/autoglm --network host autoglm-edge
#
# The default command reads /etc/autoglm/edge.toml (mount your own; the commented example is at
# /etc/autoglm/edge.toml.example, from deploy/systemd/edge.toml.example). Mount a volume on
# /var/lib/autoglm: applied settings and rolled-out packs live there. The health check asks
# 127.0.0.1:50061, the default `listen`; an edge on a Unix socket needs
# `--health-cmd 'autoglm health unix:/run/autoglm/edge.sock'`.
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PATH=/opt/autoglm/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.11 -m venv /opt/autoglm/venv
WORKDIR /opt/autoglm/src
COPY pyproject.toml README.md ./
COPY edge ./edge
COPY shared ./shared
# The `edge` extra: onnxruntime (CPU), never torch; fail the build if torch or the GPU runtime
# slipped in (onnxruntime and onnxruntime-gpu ship the same module and must not be mixed).
RUN pip install '.[edge]' \
 && if pip show --quiet torch onnxruntime-gpu 2>/dev/null; then \
      echo "torch or onnxruntime-gpu was installed into the edge image" >&2; exit 1; \
    fi

RUN groupadd --system --gid 10001 autoglm \
 && useradd --system --uid 10001 --gid autoglm --home-dir /var/lib/autoglm --create-home \
      --shell /usr/sbin/nologin autoglm \
 && install -d -o autoglm -g autoglm /run/autoglm /etc/autoglm /packs
COPY deploy/systemd/edge.toml.example /etc/autoglm/edge.toml.example
USER 10001:10001
WORKDIR /var/lib/autoglm
EXPOSE 50061
# SIGTERM: health goes NOT_SERVING and requests in flight get 5 s; SIGHUP: hot swap to whatever
# `pack` points at now (`docker kill -s HUP <container>`).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["autoglm", "health", "127.0.0.1:50061"]
ENTRYPOINT ["autoglm"]
CMD ["edge", "serve", "--config", "/etc/autoglm/edge.toml", "--state-dir", "/var/lib/autoglm"]
