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
# The explorer's browser test drives Debian's Chromium (never a browser that Playwright would
# download): installed here when running as root with apt-get; if that fails, the test skips
# and says why.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the explorer's browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >/dev/null 2>&1 || echo "could not install chromium: the explorer's browser test will be skipped"
fi
"$PY" -c "import torch, torch_vae; print('torch', torch.__version__, '| torch-vae', torch_vae.__version__)"
