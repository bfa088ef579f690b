#!/bin/sh
# Segment every challenge case: sh predict.sh [INPUT_DIR [OUTPUT_DIR]] [--model DIR]
# Defaults are the evaluator's folders /workspace/inputs and /workspace/outputs.
# The model folder can also be set with SEGFM_MODEL; default model_weights/default.
# POSIX sh on purpose: the evaluator runs `sh predict.sh` (dash).
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
# -P: the caller's folder is not put first on sys.path, so another checkout's `inference` there is not run
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -P -m inference "$@"
