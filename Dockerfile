# SegFM3D submission image: `docker container run ... <tag>:latest /bin/bash -c "sh predict.sh"`.
# Base: Debian 12 with CPython 3.11, the Python CI and the tests run. Pinned by digest; the tag is
# python:3.11-slim-bookworm. Where that registry cannot be reached, scripts/check_image.sh builds
# with --build-arg BASE_IMAGE=python:3.11-slim-bookworm after tagging a stand-in of that name made
# with debootstrap from Debian's packages (Debian's python3, also 3.11).
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# Build stage: one virtual environment, every package from the lock (exact versions, sha256 hashes, no
# dependency resolution: the lock is complete and leaves out what inference never imports), then the files
# nothing reads at run time go, and the rest is byte-compiled once (but for a test file of torch 2.13 written in
# Python 3.12's syntax).
# TORCH=cuda (default): requirements-image.lock, PyPI's CUDA 12.8 torch; the submission image.
# TORCH=cpu: requirements-image-cpu.lock, torch's CPU build and no CUDA library, for laptops and CPU servers
# (OpenVINO runs the network). PyPI has no CPU torch for Linux: give pip a folder or index that has the locked
# file (scripts/check_image.sh mounts /opt/wheels and sets PIP_FIND_LINKS; elsewhere
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu). The hash in the lock decides what is accepted.
FROM ${BASE_IMAGE} AS build
ARG TORCH=cuda
# unset unless given: a CA bundle for networks that re-sign TLS (scripts/check_image.sh mounts the host's), and
# where the CPU build of torch is found
ARG PIP_CERT
ARG PIP_FIND_LINKS
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements-image.lock requirements-image-cpu.lock /tmp/
RUN case "$TORCH" in cuda) lock=/tmp/requirements-image.lock ;; cpu) lock=/tmp/requirements-image-cpu.lock ;; \
        *) echo "TORCH must be cuda or cpu, got $TORCH" >&2; exit 1 ;; esac \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --require-hashes --no-compile -r "$lock" \
    && /opt/venv/bin/pip uninstall -y -q pip setuptools \
    && site=/opt/venv/lib/python3.11/site-packages \
    && rm -rf "$site"/torch/include "$site"/torch/share "$site"/torch/lib/*.a "$site"/nvidia/*/include "$site"/nvidia/*/lib/*.a \
        "$site"/torch/test "$site"/torch/bin/*Test "$site"/torch/bin/test_* "$site"/torch/bin/protoc* \
    && find "$site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q -j 0 -x 'py312_intrinsics\.py$' /opt/venv/lib

FROM ${BASE_IMAGE}
# the model folder the image answers with: model_weights/MODEL
ARG MODEL=default
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEGFM_MODEL=/workspace/model_weights/${MODEL}
COPY --from=build /opt/venv /opt/venv
WORKDIR /workspace
COPY predict.sh ./
COPY inference ./inference
COPY model_weights/${MODEL} ./model_weights/${MODEL}
# Byte-compile our code once (every evaluator call is a fresh container). The OpenVINO IR (the forward
# pass on a CPU) is derived from the weights; one call on an empty folder then fills OpenVINO's model
# cache (openvino/cache), which spares the next calls the compile on a CPU with this build's core count.
# Root stays the user: the evaluator's output folder is a host folder mounted read-write, and a fixed
# non-root uid could not write to it unless it happens to own it.
RUN python3 -m compileall -q inference \
    && python3 -m inference.openvino_export "model_weights/${MODEL}" \
    && mkdir -p "model_weights/${MODEL}/openvino/cache" /workspace/inputs /workspace/outputs \
    && sh predict.sh /workspace/inputs /workspace/outputs \
    && test -n "$(ls "model_weights/${MODEL}/openvino/cache")"
# the evaluator's call; the same image serves viewers with
#   docker run -p 1527:1527 segfm:latest python -m inference.server --host 0.0.0.0 --api-key KEY
EXPOSE 1527
CMD ["/bin/bash", "-c", "sh predict.sh"]
# last, so that a new version string rebuilds no layer
ARG VERSION=dev
ARG TORCH=cuda
LABEL org.opencontainers.image.title="segfm" \
      org.opencontainers.image.description="SegFM3D interactive 3D segmentation (CVPR 2025 challenge)" \
      org.opencontainers.image.version="${VERSION}" \
      org.segfm.model="model_weights/${MODEL}" \
      org.segfm.torch="${TORCH}"
