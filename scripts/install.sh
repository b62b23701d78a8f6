#!/usr/bin/env bash
# Install torch-vae (editable, with test tools) into the current Python.
# PyTorch is installed first only when it is missing: TORCH_SPEC picks the build
# (default torch==2.13.0; on a machine with a local CPU wheel of it, pip takes that one).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/python.sh
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "installing PyTorch (${TORCH_SPEC:-torch==2.13.0})"
    "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q -e ".[dev]"
"$PY" -c "import torch, torch_vae; print('torch', torch.__version__, '| torch-vae', torch_vae.__version__)"
