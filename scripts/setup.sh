#!/bin/sh
# Create .venv with everything the container and its tests need (CPU torch on a plain host),
# and export the default model for OpenVINO.
#   sh scripts/setup.sh
# torch is installed first and then held by a constraint, so no later package can swap it
# for a CUDA build of several GB.
set -eu
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip="./.venv/bin/python -m pip --disable-pip-version-check -q"
constraint=$(mktemp)
trap 'rm -f "$constraint"' EXIT
echo "torch==2.13.0" > "$constraint"
$pip install torch==2.13.0
$pip install -c "$constraint" -r requirements.txt
$pip install -c "$constraint" --no-deps -r requirements-nodeps.txt
$pip install -c "$constraint" --no-warn-conflicts -r requirements-dev.txt
./.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda build' if torch.version.cuda else 'cpu build')"
# the default model's OpenVINO IR (the CPU forward pass) is derived from its weights, not committed
./.venv/bin/python -m inference.openvino_export model_weights/default
