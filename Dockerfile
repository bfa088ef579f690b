# SegFM3D submission image: `docker run ... <tag>:latest /bin/bash -c "sh predict.sh"`.
# Build stage: a virtual environment with CUDA torch (PyPI's default Linux build) and the
# pinned packages. Final stage: only that environment and the code, no build tools.
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt requirements-nodeps.txt /tmp/
RUN pip install -r /tmp/requirements.txt \
    && pip install --no-deps -r /tmp/requirements-nodeps.txt

FROM python:3.12-slim
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
WORKDIR /workspace
COPY predict.sh ./
COPY inference ./inference
COPY model_weights ./model_weights
# Byte-compile once here: every evaluator call is a fresh container and would pay it again.
# The OpenVINO IR (the forward pass when the container runs on a CPU) is derived from the weights.
RUN python -m compileall -q inference \
    && python -m inference.openvino_export model_weights/default \
    && mkdir -p /workspace/inputs /workspace/outputs
CMD ["sh", "predict.sh"]
