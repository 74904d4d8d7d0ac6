#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install CardiacUDA with its test tools.
# torch is pinned to the CPU build that installs from the local wheel here; a machine with a GPU can
# install its own CUDA build of torch into .venv first, and this script keeps it (any torch>=2.1 fits).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".[test]"
