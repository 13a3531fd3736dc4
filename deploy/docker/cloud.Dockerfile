# The cloud side: model toolkit now, the gRPC inference service as it lands.
# CPU build by default; for CUDA hosts build with
#   --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 --build-arg TORCH_CONSTRAINT=
# (the CUDA base needs a Python 3.11 installed; see docs/operations.md when it exists).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_CONSTRAINT=-c constraints-cpu.txt
WORKDIR /app
COPY pyproject.toml constraints-cpu.txt README.md ./
COPY cloud ./cloud
COPY edge ./edge
COPY shared ./shared
RUN pip install --no-cache-dir ${TORCH_CONSTRAINT} '.[cloud]'
ENTRYPOINT ["autoglm"]
CMD ["models", "list", "/packs"]
