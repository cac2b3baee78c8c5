#!/bin/sh
# Run the GPU benchmark on a machine without this project's environment (a lent
# GPU machine: Python with torch, no network). The wheels `make gpu-wheels` put
# in .whl/ are installed into /tmp/site first; the results also go to $OUT (or
# the folder given as GPU_OUT). Arguments go to `python -m bench.gpu`.
set -eu
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" -m bench.gpu --out "${GPU_OUT:-${OUT:-bench/results}}" "$@"
